"""A GitHub Actions REST API that follows the public docs, on loopback (github.com or, with
``ghes=True``, a GitHub Enterprise Server under ``/api/v3``).

- Token auth (``Authorization: Bearer``/``token``); otherwise 401 ``{"message": "Bad
  credentials", "documentation_url", "status"}``. Unknown repositories, workflows, runs, jobs:
  404 ``{"message": "Not Found", ...}``.
- ``POST …/actions/workflows/{file or id}/dispatches`` ``{ref, inputs, return_run_details}``:
  422 for an unknown ref, undeclared inputs (``Unexpected inputs provided: [...]``), missing
  required inputs, or a workflow without ``workflow_dispatch``. With ``return_run_details``: 200
  ``{workflow_run_id, run_url, html_url}``; without: 204. ``run_details`` selects what an older
  GHES does instead: ``"rejected"`` (422 naming the field) or ``"ignored"`` (204). The run shows
  in the API ``appear_delay`` seconds later; its ``display_title`` is the workflow's ``run-name``
  with ``${{ inputs.X }}`` filled in (the workflow's name without one).
- A run is ``waiting_status`` (``queued``, ``requested``, ``pending`` or ``waiting``) for
  ``queue_delay`` s, then ``in_progress`` while its jobs run one after another (one log line every
  ``line_interval`` s); a job that does not succeed skips the jobs after it; the run then is
  ``completed`` with the first conclusion that is not ``success``. A ``HANG`` job runs until
  cancelled.
- ``GET …/runs/{id}/jobs``; ``GET …/actions/jobs/{id}/logs`` answers 302 to a signed download
  URL on a second server (the "blob store", valid 60 s), only once the job has completed
  (404 before). The blob store records any Authorization header it receives (it must get none).
- ``POST …/runs/{id}/cancel`` (a ``stubborn`` job ignores it) and ``…/force-cancel``: 202;
  409 ``Cannot cancel a workflow run that is completed.``
- GET answers carry an ``ETag``; a request with a matching ``If-None-Match`` gets 304
  (``not_modified`` counts them).
- Rate limits on demand (:meth:`FakeGitHub.limit_next`): 403 with ``x-ratelimit-remaining: 0``
  and ``x-ratelimit-reset`` (primary) or 429 with ``retry-after`` (secondary), for every request
  in the window; ``hits_while_limited`` counts them.
- ``requests`` records every request (also those a fault answered); ``dispatches`` records
  every dispatch that created a run (with its inputs, ``ascob_run``
  included), to count "never started twice".
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.fakes.server import FaultPlan, ServerThread, apply_faults

DOCS = "https://docs.github.com/rest"
QUEUE_STATUSES = ("queued", "requested", "pending", "waiting")
CANCEL_DELAY = 0.1  # a cancelled run takes a moment to wind down


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"message": message, "documentation_url": DOCS, "status": str(status)},
        status_code=status,
        headers=headers,
    )


@dataclass
class FakeJob:
    name: str
    lines: list[str] = field(default_factory=lambda: ["step 1", "step 2"])
    conclusion: str = "success"  # any GitHub conclusion, or "HANG" (runs until cancelled)
    line_interval: float = 0.05
    stubborn: bool = False  # ignores a plain cancel; force-cancel stops it

    def duration(self) -> float:
        return float("inf") if self.conclusion == "HANG" else self.line_interval * len(self.lines)


@dataclass
class FakeWorkflow:
    id: int
    repository: str
    file: str
    name: str
    jobs: list[FakeJob]
    inputs: dict[str, bool]  # name -> required
    run_name: str | None = "${{ inputs.ascob_run }}"
    state: str = "active"
    dispatchable: bool = True
    queue_delay: float = 0.0
    waiting_status: str = "queued"
    appear_delay: float = 0.0


@dataclass(eq=False)
class FakeRunJob:
    id: int
    spec: FakeJob


JobState = tuple[str, str | None, float | None, float | None, int]


@dataclass
class FakeRun:
    id: int
    number: int
    workflow: FakeWorkflow
    ref: str
    inputs: dict[str, str]
    created: float
    jobs: list[FakeRunJob]
    cancel_at: float | None = None
    force_at: float | None = None
    cancel_requests: list[str] = field(default_factory=list)

    @property
    def visible_at(self) -> float:
        return self.created + self.workflow.appear_delay

    @property
    def started(self) -> float:
        return self.visible_at + self.workflow.queue_delay

    def title(self) -> str:
        template = self.workflow.run_name
        if not template:
            return self.workflow.name
        return re.sub(
            r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}",
            lambda m: self.inputs.get(m.group(1), ""),
            template,
        )

    def stop_time(self) -> float | None:
        """When the run was brought down (a plain cancel does not stop a stubborn job)."""
        times = []
        if self.force_at is not None:
            times.append(self.force_at + CANCEL_DELAY)
        if self.cancel_at is not None:
            at = self.cancel_at + CANCEL_DELAY
            running = self._timeline(at, None)
            if not any(job.spec.stubborn and st[0] == "in_progress" for job, st in running):
                times.append(at)
        return min(times) if times else None

    def jobs_at(self, now: float) -> list[tuple[FakeRunJob, JobState]]:
        return self._timeline(now, self.stop_time())

    def _timeline(self, now: float, stop: float | None) -> list[tuple[FakeRunJob, JobState]]:
        """Each job at ``now``: (status, conclusion, started, completed, lines shown)."""
        out: list[tuple[FakeRunJob, JobState]] = []
        t = self.started  # when the next job starts
        blocked = False  # an earlier job is still queued or running
        after: str | None = None  # an earlier job ended without success: skipped/cancelled
        for job in self.jobs:
            spec = job.spec
            if blocked:
                out.append((job, ("queued", None, None, None, 0)))
                continue
            if after is not None:
                out.append((job, ("completed", after, None, t, 0)))
                continue
            if stop is not None and stop <= t and now >= stop:
                out.append((job, ("completed", "cancelled", None, stop, 0)))
                after, t = "cancelled", stop
                continue
            if now < t:
                out.append((job, ("queued", None, None, None, 0)))
                blocked = True
                continue
            end = t + spec.duration()
            if stop is not None and stop < end and now >= stop:
                shown = min(len(spec.lines), int((stop - t) / spec.line_interval) + 1)
                out.append((job, ("completed", "cancelled", t, stop, shown)))
                after, t = "cancelled", stop
                continue
            if now < end:
                shown = min(len(spec.lines), int((now - t) / spec.line_interval) + 1)
                out.append((job, ("in_progress", None, t, None, shown)))
                blocked = True
                continue
            out.append((job, ("completed", spec.conclusion, t, end, len(spec.lines))))
            if spec.conclusion != "success":
                after = "skipped"
            t = end
        return out

    def state(self, now: float) -> tuple[str, str | None]:
        stop = self.stop_time()
        if now < self.started:
            if stop is not None and now >= stop and stop < self.started:
                return "completed", "cancelled"
            return self.workflow.waiting_status, None
        jobs = self.jobs_at(now)
        if any(s[0] != "completed" for _, s in jobs):
            return "in_progress", None
        for _, s in jobs:
            if s[1] not in ("success", "skipped"):
                return "completed", s[1]
        return "completed", "success"

    def log(self, job: FakeRunJob, shown: int, conclusion: str | None) -> str:
        lines = [f"Run {job.spec.name} on ref {self.ref}"]
        if job is self.jobs[0]:
            lines += [f"{k}={v}" for k, v in self.inputs.items()]
        lines += job.spec.lines[:shown]
        if conclusion == "cancelled":
            lines.append("##[error]The operation was canceled.")
        elif conclusion not in ("success", None):
            lines.append(f"##[error]Process completed with exit code 1 ({conclusion}).")
        stamp = iso(self.created).replace("Z", ".0000000Z")
        return "\ufeff" + "".join(f"{stamp} {line}\n" for line in lines)


class FakeGitHub:
    def __init__(
        self, token: str = "github-secret", ghes: bool = False, run_details: str = "supported"
    ) -> None:
        self.tokens = {token}
        self.prefix = "/api/v3" if ghes else ""
        self.run_details = run_details  # "supported", "rejected" or "ignored"
        self.repos: dict[str, dict[str, Any]] = {}
        self.workflows: dict[int, FakeWorkflow] = {}
        self.runs: dict[int, FakeRun] = {}
        self.dispatches: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.blob_requests: list[dict[str, Any]] = []
        self.faults = FaultPlan()
        self.hits_while_limited = 0
        self.not_modified = 0  # 304 answers to conditional GETs (free of rate limit on GitHub)
        self._limit: tuple[str, str, str, float] | None = None  # method, path, kind, seconds
        self._limited_until = 0.0
        self._limit_kind = "primary"
        self._secret = secrets.token_bytes(16)
        self._ids = 1000
        self._lock = threading.RLock()
        self.server = ServerThread(
            Starlette(
                routes=[Route("/{path:path}", self._dispatch, methods=["GET", "POST", "DELETE"])]
            )
        )
        self.blob = ServerThread(
            Starlette(routes=[Route("/job-logs/{job_id:int}", self._blob, methods=["GET"])])
        )

    @property
    def url(self) -> str:
        """The API root to configure (``…/api/v3`` for GHES)."""
        return self.server.url + self.prefix

    def start(self) -> FakeGitHub:
        self.server.start()
        self.blob.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.blob.stop()

    # ------------------------------------------------------------------ set-up

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def add_repo(
        self, full_name: str, default_branch: str = "main", refs: tuple[str, ...] = ()
    ) -> None:
        with self._lock:
            self.repos.setdefault(
                full_name,
                {
                    "id": self._next_id(),
                    "full_name": full_name,
                    "default_branch": default_branch,
                    "refs": {default_branch, *refs},
                },
            )

    def add_workflow(
        self,
        repository: str,
        file: str,
        jobs: list[FakeJob] | None = None,
        inputs: dict[str, bool] | None = None,
        **kwargs: Any,
    ) -> FakeWorkflow:
        self.add_repo(repository)
        declared = {"ascob_run": False} if inputs is None else inputs
        workflow = FakeWorkflow(
            id=self._next_id(),
            repository=repository,
            file=file,
            name=kwargs.pop("name", file.rsplit(".", 1)[0]),
            jobs=jobs or [FakeJob("build")],
            inputs=declared,
            **kwargs,
        )
        with self._lock:
            self.workflows[workflow.id] = workflow
        return workflow

    def runs_of(self, workflow: FakeWorkflow) -> list[FakeRun]:
        return [r for r in self.runs.values() if r.workflow is workflow]

    def limit_next(
        self, method: str, path: str, kind: str = "primary", seconds: float = 1.0
    ) -> None:
        """The next request matching ``method`` and ``path`` (a regex) opens a rate-limit window
        of ``seconds``: it and every request in the window are refused (403 primary with
        x-ratelimit-* headers, or 429 secondary with retry-after)."""
        with self._lock:
            self._limit = (method.upper(), path, kind, seconds)

    # ------------------------------------------------------------------ plumbing

    async def _dispatch(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path))  # faulted ones too
        return await apply_faults(self.faults, request, self._handle)

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() in ("bearer", "token") and token in self.tokens

    def _rate_headers(self, now: float) -> dict[str, str]:
        limited = now < self._limited_until
        reset = int(self._limited_until + 0.999) if limited else int(now) + 3600
        return {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "0" if limited else "4999",
            "x-ratelimit-reset": str(reset),
            "x-ratelimit-resource": "core",
        }

    def _rate_limited(self, request: Request, path: str, now: float) -> Response | None:
        with self._lock:
            limit = self._limit
            if limit and request.method == limit[0] and re.search(limit[1], path):
                self._limit = None
                self._limited_until = now + limit[3]
                self._limit_kind = limit[2]
            if now >= self._limited_until:
                return None
            self.hits_while_limited += 1
        if self._limit_kind == "secondary":
            wait = max(1, int(self._limited_until - now + 0.999))
            return error(
                429,
                "You have exceeded a secondary rate limit. Please wait a few minutes before "
                "you try again.",
                **{"retry-after": str(wait)},
            )
        return error(403, "API rate limit exceeded for user ID 1.", **self._rate_headers(now))

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        now = time.time()
        if not path.startswith(self.prefix + "/"):
            return error(404, "Not Found")
        path = path[len(self.prefix) :]
        if not self._authorized(request):
            return error(401, "Bad credentials")
        limited = self._rate_limited(request, path, now)
        if limited is not None:
            return limited
        with self._lock:
            response = await self._route(request, path, now)
        if (
            request.method == "GET"
            and response.status_code == 200
            and isinstance(response, JSONResponse)
        ):
            etag = f'W/"{hashlib.sha1(bytes(response.body)).hexdigest()}"'
            if request.headers.get("if-none-match") == etag:
                self.not_modified += 1
                response = Response(status_code=304)
            response.headers["ETag"] = etag
        response.headers.update(self._rate_headers(now))
        return response

    def _base(self, request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def _workflow(self, repository: str, ref: str) -> FakeWorkflow | None:
        for wf in self.workflows.values():
            if wf.repository == repository and ref in (str(wf.id), wf.file):
                return wf
        return None

    async def _route(self, request: Request, path: str, now: float) -> Response:
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)(/.*)?", path)
        if not m:
            return error(404, "Not Found")
        repository, rest = f"{m.group(1)}/{m.group(2)}", m.group(3) or ""
        repo = self.repos.get(repository)
        if repo is None:
            return error(404, "Not Found")
        if rest == "" and request.method == "GET":
            return JSONResponse(
                {
                    "id": repo["id"],
                    "name": m.group(2),
                    "full_name": repository,
                    "private": True,
                    "default_branch": repo["default_branch"],
                    "html_url": f"{self._base(request)}/{repository}",
                }
            )
        m = re.fullmatch(r"/actions/workflows/([^/]+)(/dispatches|/runs)?", rest)
        if m:
            wf = self._workflow(repository, m.group(1))
            if wf is None:
                return error(404, "Not Found")
            if m.group(2) is None and request.method == "GET":
                return JSONResponse(self._workflow_json(request, wf))
            if m.group(2) == "/dispatches" and request.method == "POST":
                return await self._dispatch_workflow(request, wf, repo, now)
            if m.group(2) == "/runs" and request.method == "GET":
                return self._list_runs(request, wf, now)
            return error(404, "Not Found")
        m = re.fullmatch(r"/actions/runs/(\d+)(/jobs|/cancel|/force-cancel)?", rest)
        if m:
            run = self.runs.get(int(m.group(1)))
            if run is None or run.workflow.repository != repository or now < run.visible_at:
                return error(404, "Not Found")
            if m.group(2) is None and request.method == "GET":
                return JSONResponse(self._run_json(request, run, now))
            if m.group(2) == "/jobs" and request.method == "GET":
                return self._list_jobs(request, run, now)
            if m.group(2) in ("/cancel", "/force-cancel") and request.method == "POST":
                if run.state(now)[0] == "completed":
                    return error(409, "Cannot cancel a workflow run that is completed.")
                run.cancel_requests.append(m.group(2)[1:])
                if m.group(2) == "/cancel":
                    run.cancel_at = run.cancel_at or now
                else:
                    run.force_at = run.force_at or now
                return JSONResponse({}, status_code=202)
            return error(404, "Not Found")
        m = re.fullmatch(r"/actions/jobs/(\d+)/logs", rest)
        if m and request.method == "GET":
            return self._job_logs(repository, int(m.group(1)), now)
        return error(404, "Not Found")

    # ------------------------------------------------------------------ endpoints

    def _workflow_json(self, request: Request, wf: FakeWorkflow) -> dict[str, Any]:
        return {
            "id": wf.id,
            "node_id": f"W_{wf.id}",
            "name": wf.name,
            "path": f".github/workflows/{wf.file}",
            "state": wf.state,
            "html_url": f"{self._base(request)}/{wf.repository}/blob/main/.github/workflows/"
            f"{wf.file}",
        }

    async def _dispatch_workflow(
        self, request: Request, wf: FakeWorkflow, repo: dict[str, Any], now: float
    ) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "Problems parsing JSON")
        if not isinstance(body, dict):
            return error(400, "Problems parsing JSON")
        wants_details = bool(body.get("return_run_details"))
        if "return_run_details" in body and self.run_details == "rejected":
            return error(422, 'Invalid request.\n\n"return_run_details" is not a permitted key.')
        if self.run_details == "ignored":
            wants_details = False
        ref = str(body.get("ref") or "")
        if not ref:
            return error(422, 'Invalid request.\n\n"ref" wasn\'t supplied.')
        if ref.removeprefix("refs/heads/").removeprefix("refs/tags/") not in repo["refs"]:
            return error(422, f"No ref found for: {ref}")
        if not wf.dispatchable:
            return error(422, "Workflow does not have 'workflow_dispatch' trigger")
        inputs = body.get("inputs") or {}
        if not isinstance(inputs, dict):
            return error(422, "Invalid request.\n\nFor 'properties/inputs', is not an object.")
        unexpected = [k for k in inputs if k not in wf.inputs]
        if unexpected:
            names = ", ".join(f'"{k}"' for k in unexpected)
            return error(422, f"Unexpected inputs provided: [{names}]")
        for name, required in wf.inputs.items():
            if required and name not in inputs:
                return error(422, f"Required input '{name}' not provided")
        run = FakeRun(
            id=self._next_id(),
            number=len(self.runs_of(wf)) + 1,
            workflow=wf,
            ref=ref,
            inputs={k: str(v) for k, v in inputs.items()},
            created=now,
            jobs=[FakeRunJob(self._next_id(), spec) for spec in wf.jobs],
        )
        self.runs[run.id] = run
        self.dispatches.append(
            {"workflow": wf.file, "run_id": run.id, "ref": ref, "inputs": dict(run.inputs)}
        )
        if not wants_details:
            return Response(status_code=204)
        api = f"{self._base(request)}{self.prefix}/repos/{wf.repository}/actions/runs/{run.id}"
        return JSONResponse(
            {
                "workflow_run_id": run.id,
                "run_url": api,
                "html_url": f"{self._base(request)}/{wf.repository}/actions/runs/{run.id}",
            }
        )

    def _run_json(self, request: Request, run: FakeRun, now: float) -> dict[str, Any]:
        status, conclusion = run.state(now)
        base = self._base(request)
        api = f"{base}{self.prefix}/repos/{run.workflow.repository}/actions/runs/{run.id}"
        return {
            "id": run.id,
            "name": run.workflow.name,
            "display_title": run.title(),
            "run_number": run.number,
            "run_attempt": 1,
            "event": "workflow_dispatch",
            "status": status,
            "conclusion": conclusion,
            "workflow_id": run.workflow.id,
            "head_branch": run.ref,
            "path": f".github/workflows/{run.workflow.file}",
            "created_at": iso(run.created),
            "updated_at": iso(run.created),
            "url": api,
            "html_url": f"{base}/{run.workflow.repository}/actions/runs/{run.id}",
            "jobs_url": f"{api}/jobs",
            "logs_url": f"{api}/logs",
            "cancel_url": f"{api}/cancel",
        }

    def _list_runs(self, request: Request, wf: FakeWorkflow, now: float) -> Response:
        q = request.query_params
        runs = [r for r in self.runs_of(wf) if now >= r.visible_at]
        event = q.get("event")
        if event and event != "workflow_dispatch":
            runs = []
        created = q.get("created", "")
        if created.startswith(">="):
            since = datetime.strptime(created[2:], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            runs = [r for r in runs if r.created >= since.timestamp() - 1]
        runs.sort(key=lambda r: r.created, reverse=True)
        per_page, page = int(q.get("per_page", "30")), int(q.get("page", "1"))
        shown = runs[(page - 1) * per_page : page * per_page]
        return JSONResponse(
            {
                "total_count": len(runs),
                "workflow_runs": [self._run_json(request, r, now) for r in shown],
            }
        )

    def _list_jobs(self, request: Request, run: FakeRun, now: float) -> Response:
        q = request.query_params
        base = self._base(request)
        waiting = now < run.started and run.state(now)[0] != "completed"
        jobs = [] if waiting else run.jobs_at(now)
        per_page, page = int(q.get("per_page", "30")), int(q.get("page", "1"))
        shown = jobs[(page - 1) * per_page : page * per_page]
        return JSONResponse(
            {
                "total_count": len(jobs),
                "jobs": [
                    {
                        "id": job.id,
                        "run_id": run.id,
                        "name": job.spec.name,
                        "status": status,
                        "conclusion": conclusion,
                        "started_at": iso(started) if started else None,
                        "completed_at": iso(completed) if completed else None,
                        "html_url": f"{base}/{run.workflow.repository}/actions/runs/{run.id}"
                        f"/job/{job.id}",
                        "steps": [],
                    }
                    for job, (status, conclusion, started, completed, _) in shown
                ],
            }
        )

    def _find_job(self, job_id: int) -> tuple[FakeRun, FakeRunJob] | None:
        for run in self.runs.values():
            for job in run.jobs:
                if job.id == job_id:
                    return run, job
        return None

    def _sign(self, job_id: int, expires: int) -> str:
        return hmac.new(self._secret, f"{job_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def _job_logs(self, repository: str, job_id: int, now: float) -> Response:
        found = self._find_job(job_id)
        if found is None or found[0].workflow.repository != repository:
            return error(404, "Not Found")
        run, job = found
        state = dict(run.jobs_at(now)).get(job)
        if state is None or state[0] != "completed" or state[2] is None:  # never started
            return error(404, "Not Found")
        expires = int(now) + 60
        location = (
            f"{self.blob.url}/job-logs/{job_id}?exp={expires}&sig={self._sign(job_id, expires)}"
        )
        return Response(status_code=302, headers={"Location": location})

    async def _blob(self, request: Request) -> Response:
        job_id = int(request.path_params["job_id"])
        self.blob_requests.append(
            {"job_id": job_id, "authorization": request.headers.get("authorization")}
        )
        try:
            expires = int(request.query_params.get("exp", "0"))
        except ValueError:
            expires = 0
        sig = request.query_params.get("sig", "")
        if expires < time.time() or not hmac.compare_digest(sig, self._sign(job_id, expires)):
            return PlainTextResponse("AuthenticationFailed", status_code=403)
        with self._lock:
            found = self._find_job(job_id)
            if found is None:
                return PlainTextResponse("BlobNotFound", status_code=404)
            run, job = found
            _, conclusion, _, _, shown = dict(run.jobs_at(time.time()))[job]
            text = run.log(job, shown, conclusion)
        return Response(text.encode(), media_type="text/plain; charset=utf-8")
