"""A GitLab server following the documented behaviour of its REST API v4 (pipelines and jobs).

- Every path is ``/api/v4/…``; a project is named by its id or its URL-encoded path
  (``group%2Fproject``; an unencoded slash matches no route). ``PRIVATE-TOKEN`` is required:
  401 ``{"message": "401 Unauthorized"}`` otherwise. Errors are JSON ``{"message": …}`` (a string,
  or ``{"base": [...]}`` for a pipeline that could not be created) or ``{"error": …}``.
- ``POST projects/:id/pipeline`` with ``{"ref", "variables": [{"key", "value"}]}`` answers 201
  and the pipeline; an unknown ref is 400 ``Reference not found``; a project whose workflow rules
  refuse answers 400 ``Pipeline filtered out by workflow rules.`` and creates nothing.
- A pipeline runs its project's jobs stage after stage: ``created`` for ``create_delay`` s, then
  each job is ``pending`` for ``runner_delay`` s, ``running`` while it prints its lines (one every
  ``line_interval`` s, each written in two halves), then ``success``/``failed`` (or never ends:
  ``HANG``). A failure (without ``allow_failure``) skips later stages. A blocking manual job
  leaves the pipeline ``manual``. The pipeline status is composed from its jobs.
- Logs look like a runner's (ANSI colours, ``section_start``/``section_end`` markers, progress
  rewritten with ``\\r``) and grow while the job runs; ``GET jobs/:id/trace`` serves the whole log
  (404 before the job starts).
- ``POST pipelines/:id/cancel`` cancels jobs not started and puts running ones in ``canceling``
  until their runner confirms (``cancel_grace`` s; None: never). ``POST jobs/:id/cancel`` cancels
  one job; with ``force=true`` it ends a ``canceling`` job at once (422 for any other state).
- Lists: ``pipelines`` (``ref``, ``source``, ``name``, ``order_by=id``, ``sort``, ``per_page``),
  ``pipelines/:id/jobs`` (newest first, paginated with ``page``/``per_page`` and the
  ``X-Next-Page`` header), ``pipelines/:id/variables``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import FaultPlan, ServerThread, apply_faults

ENDED = {"success", "failed", "canceled", "skipped"}


def stamp(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class JobSpec:
    """One job of a project's ``.gitlab-ci.yml``."""

    name: str
    stage: str = "test"
    lines: list[str] = field(default_factory=lambda: ["step 1", "step 2"])
    result: str = "success"  # success | failed | HANG
    line_interval: float = 0.05
    runner_delay: float = 0.0
    allow_failure: bool = False
    manual: bool = False  # when: manual, allow_failure: false (it blocks the pipeline)
    cancel_grace: float | None = 0.2
    echo_variables: bool = True


@dataclass
class Project:
    id: int
    path: str
    jobs: list[JobSpec]
    branches: set[str] = field(default_factory=lambda: {"main"})
    default_branch: str = "main"
    workflow_refuses: bool = False
    create_delay: float = 0.0
    name_from_run: bool = False  # workflow: name: $ASCOB_RUN
    yaml_errors: str | None = None  # the pipeline is created failed, without jobs


@dataclass
class JobRun:
    id: int
    spec: JobSpec
    stage_index: int
    status: str = "created"
    pending_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested: float | None = None
    cancel_done: float | None = None
    force_cancels: int = 0


@dataclass
class Pipeline:
    id: int
    iid: int
    project: Project
    ref: str
    variables: list[dict[str, str]]
    created: float
    jobs: list[JobRun]
    name: str | None = None
    canceled_at: float | None = None
    override: str | None = None
    override_finished: bool = False

    def variable(self, key: str) -> str | None:
        return next((v["value"] for v in self.variables if v.get("key") == key), None)


class FakeGitLab:
    def __init__(self, token: str = "gitlab-secret") -> None:
        self.token = token
        self.projects: dict[int, Project] = {}
        self.pipelines: dict[int, Pipeline] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults = FaultPlan()
        self._next_project = 10
        self._next_pipeline = 500
        self._next_job = 9000
        self._lock = threading.RLock()
        app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=["GET", "POST"])])
        self.server = ServerThread(app)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> FakeGitLab:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    # ------------------------------------------------------------------ test helpers

    def add_project(self, path: str, jobs: list[JobSpec] | None = None, **kwargs: Any) -> Project:
        with self._lock:
            self._next_project += 1
            project = Project(self._next_project, path, jobs or [JobSpec("build")], **kwargs)
            self.projects[project.id] = project
            return project

    def started(self, run_value: str) -> list[Pipeline]:
        """The pipelines created with ``ASCOB_RUN=run_value``."""
        with self._lock:
            return [p for p in self.pipelines.values() if p.variable("ASCOB_RUN") == run_value]

    def of_project(self, project: Project) -> list[Pipeline]:
        with self._lock:
            return [p for p in self.pipelines.values() if p.project is project]

    def force_status(self, pipeline_id: int, status: str, finished: bool = False) -> None:
        """Make the pipeline report ``status`` whatever its jobs do."""
        with self._lock:
            self.pipelines[pipeline_id].override = status
            self.pipelines[pipeline_id].override_finished = finished

    # ------------------------------------------------------------------ simulation

    def _advance(self, p: Pipeline, now: float) -> None:
        start = p.created + p.project.create_delay
        if now < start:
            return
        for _ in range(len(p.jobs) * 4 + 4):
            if not self._step(p, now, start):
                return

    def _step(self, p: Pipeline, now: float, start: float) -> bool:
        """One transition whose time has come; False when there is none."""
        for job in p.jobs:
            spec = job.spec
            if job.status == "canceling" and job.cancel_done is not None and now >= job.cancel_done:
                job.status, job.finished_at = "canceled", job.cancel_done
                return True
            if job.status == "pending" and job.pending_at is not None:
                begins = job.pending_at + spec.runner_delay
                if now >= begins:
                    job.status, job.started_at = "running", begins
                    return True
            if job.status == "running" and spec.result != "HANG" and job.started_at is not None:
                ends = job.started_at + len(self._lines(p, job)) * spec.line_interval
                if now >= ends:
                    job.status, job.finished_at = spec.result, ends
                    return True
        if p.canceled_at is not None:
            return False
        # reach the next stage once every job of the current one is done
        reached_at = start
        for index in sorted({j.stage_index for j in p.jobs}):
            stage = [j for j in p.jobs if j.stage_index == index]
            if all(j.status == "created" for j in stage):
                for j in stage:
                    j.status = "manual" if j.spec.manual else "pending"
                    j.pending_at = reached_at
                return True
            done = [
                j
                for j in stage
                if j.status in ENDED or (j.status == "manual" and j.spec.allow_failure)
            ]
            if len(done) < len(stage):
                return False
            if any(j.status == "failed" and not j.spec.allow_failure for j in stage):
                changed = False
                for later in p.jobs:
                    if later.stage_index > index and later.status == "created":
                        later.status = "skipped"
                        changed = True
                return changed
            reached_at = max([reached_at, *(j.finished_at or reached_at for j in stage)])
        return False

    def _status(self, p: Pipeline, now: float) -> str:
        if p.override is not None:
            return p.override
        statuses = [j.status for j in p.jobs]
        if "canceling" in statuses:
            return "canceling"
        if p.canceled_at is not None:
            return "canceled"
        if now < p.created + p.project.create_delay:
            return "created"
        if "running" in statuses:
            return "running"
        if "pending" in statuses:
            begun = any(s in ENDED for s in statuses)
            return "running" if begun else "pending"
        if any(j.status == "manual" and not j.spec.allow_failure for j in p.jobs):
            return "manual"
        if any(j.status == "failed" and not j.spec.allow_failure for j in p.jobs):
            return "failed"
        if "created" in statuses:
            return "running"
        if all(s == "skipped" for s in statuses):
            return "skipped"
        return "success"

    def _lines(self, p: Pipeline, job: JobRun) -> list[str]:
        if not job.spec.echo_variables:
            return list(job.spec.lines)
        return [f"{v['key']}={v['value']}" for v in p.variables] + job.spec.lines

    def _trace(self, p: Pipeline, job: JobRun, now: float) -> bytes | None:
        s = job.started_at
        if s is None:
            return None
        ts = int(s)
        out = [
            "\x1b[0KRunning with gitlab-runner 17.5.0 (fake)\x1b[0;m\n",
            f"section_start:{ts}:prepare_script\r\x1b[0K\x1b[0K\x1b[36;1mPreparing environment"
            "\x1b[0;m\n",
            "Fetching changes 10%\rFetching changes 60%\rFetching changes 100%\n",
            f"section_end:{ts}:prepare_script\r\x1b[0K\n",
            f'section_start:{ts}:step_script\r\x1b[0K\x1b[0K\x1b[36;1mExecuting "step_script" '
            "stage of the job script\x1b[0;m\n",
            "\x1b[32;1m$ ./job.sh\x1b[0;m\n",
        ]
        until = now
        if job.cancel_requested is not None:
            until = min(until, job.cancel_requested)
        if job.finished_at is not None:
            until = min(until, job.finished_at)
        interval = job.spec.line_interval
        for i, line in enumerate(self._lines(p, job)):
            if until >= s + (i + 0.5) * interval:
                out.append(line + "\n")
            elif until >= s + i * interval:
                out.append(line[: len(line) // 2])
                break
            else:
                break
        if job.status in ENDED:
            out.append(f"section_end:{ts}:step_script\r\x1b[0K\n")
            out.append(
                {
                    "success": "\x1b[32;1mJob succeeded\x1b[0;m\n",
                    "failed": "\x1b[31;1mERROR: Job failed: exit code 1\x1b[0;m\n",
                    "canceled": "\x1b[31;1mERROR: Job failed: canceled\x1b[0;m\n",
                }.get(job.status, "")
            )
        return "".join(out).encode()

    # ------------------------------------------------------------------ JSON shapes

    def _web(self, request: Request, p: Pipeline) -> str:
        return f"{str(request.base_url).rstrip('/')}/{p.project.path}"

    def _pipeline_json(self, request: Request, p: Pipeline, now: float) -> dict[str, Any]:
        status = self._status(p, now)
        started = [j.started_at for j in p.jobs if j.started_at is not None]
        finished = [j.finished_at for j in p.jobs if j.finished_at is not None]
        ended = status in ENDED or (p.override is not None and p.override_finished)
        warned = status == "success" and any(j.status == "failed" for j in p.jobs)
        group = "success-with-warnings" if warned else status
        return {
            "id": p.id,
            "iid": p.iid,
            "project_id": p.project.id,
            "status": status,
            "source": "api",
            "ref": p.ref,
            "sha": "0ff3ae198f8601a285adcf5c0fff204ee6fba5fd",
            "name": p.name,
            "web_url": f"{self._web(request, p)}/-/pipelines/{p.id}",
            "created_at": stamp(p.created),
            "updated_at": stamp(now),
            "started_at": stamp(min(started)) if started else None,
            "finished_at": stamp(max(finished, default=p.canceled_at or now)) if ended else None,
            "detailed_status": {"group": group, "text": status, "label": status},
            "yaml_errors": p.project.yaml_errors,
        }

    def _job_json(self, request: Request, p: Pipeline, job: JobRun, now: float) -> dict[str, Any]:
        return {
            "id": job.id,
            "name": job.spec.name,
            "stage": job.spec.stage,
            "status": job.status,
            "allow_failure": job.spec.allow_failure,
            "created_at": stamp(p.created),
            "started_at": stamp(job.started_at),
            "finished_at": stamp(job.finished_at),
            "failure_reason": "script_failure" if job.status == "failed" else None,
            "ref": p.ref,
            "tag": False,
            "web_url": f"{self._web(request, p)}/-/jobs/{job.id}",
            "pipeline": {
                "id": p.id,
                "project_id": p.project.id,
                "ref": p.ref,
                "status": self._status(p, now),
            },
        }

    # ------------------------------------------------------------------ HTTP

    async def _dispatch(self, request: Request) -> Response:
        return await apply_faults(self.faults, request, self._handle)

    @staticmethod
    def _error(status: int, message: Any, key: str = "message") -> JSONResponse:
        return JSONResponse({key: message}, status_code=status)

    async def _handle(self, request: Request) -> Response:
        raw = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0]
        self.requests.append((request.method, raw))
        if request.headers.get("PRIVATE-TOKEN") != self.token:
            return self._error(401, "401 Unauthorized")
        body: dict[str, Any] = {}
        if request.method == "POST" and await request.body():
            try:
                body = json.loads(await request.body())
            except ValueError:
                return self._error(400, "malformed JSON", "error")
        m = re.fullmatch(r"/api/v4/projects/([^/]+)(/.*)?", raw)
        if not m:
            return self._error(404, "404 Not Found", "error")
        with self._lock:
            project = self._project(unquote(m.group(1)))
            if project is None:
                return self._error(404, "404 Project Not Found")
            now = time.time()
            for p in self.pipelines.values():
                if p.project is project:
                    self._advance(p, now)
            return self._route(request, project, (m.group(2) or "").rstrip("/"), body, now)

    def _project(self, name: str) -> Project | None:
        if name.isdigit():
            return self.projects.get(int(name))
        return next((p for p in self.projects.values() if p.path == name), None)

    def _route(
        self, request: Request, project: Project, rest: str, body: dict[str, Any], now: float
    ) -> Response:
        q = request.query_params
        if rest == "" and request.method == "GET":
            return JSONResponse(
                {
                    "id": project.id,
                    "path_with_namespace": project.path,
                    "default_branch": project.default_branch,
                }
            )
        if rest == "/pipeline" and request.method == "POST":
            return self._create(request, project, body, now)
        if rest == "/pipelines" and request.method == "GET":
            found = [
                p
                for p in self.pipelines.values()
                if p.project is project
                and ("ref" not in q or p.ref == q["ref"])
                and (q.get("source", "api") == "api")
                and ("name" not in q or p.name == q["name"])
            ]
            found.sort(key=lambda p: p.id, reverse=q.get("sort", "desc") == "desc")
            per_page = min(int(q.get("per_page", "20")), 100)
            return JSONResponse([self._pipeline_json(request, p, now) for p in found[:per_page]])
        m = re.fullmatch(r"/pipelines/(\d+)(?:/(variables|jobs|cancel))?", rest)
        if m:
            p = self.pipelines.get(int(m.group(1)))
            if p is None or p.project is not project:
                return self._error(404, "404 Not found")
            what = m.group(2)
            if what is None and request.method == "GET":
                return JSONResponse(self._pipeline_json(request, p, now))
            if what == "variables" and request.method == "GET":
                return JSONResponse(
                    [
                        {"key": v["key"], "variable_type": "env_var", "value": v["value"]}
                        for v in p.variables
                    ]
                )
            if what == "jobs" and request.method == "GET":
                return self._jobs(request, p, now)
            if what == "cancel" and request.method == "POST":
                self._cancel_pipeline(p, now)
                return JSONResponse(self._pipeline_json(request, p, now))
            return Response(status_code=405)
        m = re.fullmatch(r"/jobs/(\d+)/(trace|cancel)", rest)
        if m:
            found_job = next(
                (
                    (p, j)
                    for p in self.pipelines.values()
                    if p.project is project
                    for j in p.jobs
                    if j.id == int(m.group(1))
                ),
                None,
            )
            if found_job is None:
                return self._error(404, "404 Job Not Found")
            p, job = found_job
            if m.group(2) == "trace" and request.method == "GET":
                trace = self._trace(p, job, now)
                if trace is None:
                    return self._error(404, "404 Not Found")
                return Response(trace, media_type="text/plain")
            if m.group(2) == "cancel" and request.method == "POST":
                force = str(q.get("force", body.get("force", ""))).lower() == "true"
                return self._cancel_job(request, p, job, force, now)
            return Response(status_code=405)
        return self._error(404, "404 Not Found", "error")

    def _create(
        self, request: Request, project: Project, body: dict[str, Any], now: float
    ) -> Response:
        ref = request.query_params.get("ref") or body.get("ref")
        if not ref:
            return self._error(400, "ref is missing", "error")
        if ref not in project.branches:
            return self._error(400, {"base": ["Reference not found"]})
        variables = body.get("variables") or []
        if not isinstance(variables, list) or not all(
            isinstance(v, dict) and re.fullmatch(r"\w+", str(v.get("key", ""))) for v in variables
        ):
            return self._error(400, {"variables": ["key is invalid"]})
        if project.workflow_refuses:
            return self._error(400, {"base": ["Pipeline filtered out by workflow rules."]})
        self._next_pipeline += 1
        jobs = []
        stages: list[str] = []
        for spec in [] if project.yaml_errors else project.jobs:
            if spec.stage not in stages:
                stages.append(spec.stage)
            self._next_job += 1
            jobs.append(JobRun(self._next_job, spec, stages.index(spec.stage)))
        p = Pipeline(
            id=self._next_pipeline,
            iid=len(self.of_project(project)) + 1,
            project=project,
            ref=str(ref),
            variables=[{"key": str(v["key"]), "value": str(v.get("value", ""))} for v in variables],
            created=now,
            jobs=jobs,
        )
        if project.name_from_run:
            p.name = p.variable("ASCOB_RUN")
        if project.yaml_errors:
            p.override, p.override_finished = "failed", True
        self.pipelines[p.id] = p
        self._advance(p, now)
        return JSONResponse(self._pipeline_json(request, p, now), status_code=201)

    def _jobs(self, request: Request, p: Pipeline, now: float) -> Response:
        q = request.query_params
        per_page = min(int(q.get("per_page", "20")), 100)
        page = int(q.get("page", "1"))
        jobs = sorted(p.jobs, key=lambda j: j.id, reverse=True)
        chunk = jobs[(page - 1) * per_page : page * per_page]
        more = page * per_page < len(jobs)
        return JSONResponse(
            [self._job_json(request, p, j, now) for j in chunk],
            headers={
                "X-Page": str(page),
                "X-Per-Page": str(per_page),
                "X-Next-Page": str(page + 1) if more else "",
                "X-Total": str(len(jobs)),
            },
        )

    def _cancel_one(self, job: JobRun, now: float) -> None:
        if job.status in ("created", "pending", "manual"):
            job.status, job.finished_at = "canceled", None
        elif job.status == "running":
            job.status, job.cancel_requested = "canceling", now
            grace = job.spec.cancel_grace
            job.cancel_done = None if grace is None else now + grace

    def _cancel_pipeline(self, p: Pipeline, now: float) -> None:
        if self._status(p, now) in ENDED:
            return
        p.canceled_at = now
        for job in p.jobs:
            self._cancel_one(job, now)

    def _cancel_job(
        self, request: Request, p: Pipeline, job: JobRun, force: bool, now: float
    ) -> Response:
        if force:
            if job.status != "canceling":
                return self._error(422, "422 Unprocessable Entity")
            job.force_cancels += 1
            job.status, job.finished_at = "canceled", now
        elif job.status in ("created", "pending", "manual", "running"):
            self._cancel_one(job, now)
        else:
            return self._error(422, "422 Unprocessable Entity")
        return JSONResponse(self._job_json(request, p, job, now), status_code=201)
