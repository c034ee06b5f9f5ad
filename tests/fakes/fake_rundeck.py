"""A Rundeck / PagerDuty Process Automation server following its API's documented behaviour.

- Every path is ``/api/{version}/…``; versions outside ``min_version..max_version`` answer 400
  ``api.error.api-version.unsupported``. ``X-Rundeck-Auth-Token`` is required (403 otherwise).
  Errors are JSON ``{"error": true, "errorCode": …, "message": …}``.
- ``GET project/{p}/jobs?jobExactFilter=&groupPathExact=``; ``GET job/{id}/info``;
  ``POST job/{id}/run`` with ``{"options": {…}}`` (a missing required option is a 400; options
  the job does not declare are kept in the execution's ``argstring``, as Rundeck does);
  ``GET job/{id}/executions?max=&offset=``, newest first.
- An execution is ``scheduled`` for ``scheduled_delay`` s, ``running`` while it prints its lines
  (one every ``line_interval`` s), then ends with the job's ``final`` status: ``succeeded``,
  ``failed``, ``timedout``, ``other`` (with ``customStatus``), ``failed-with-retry`` (a retry
  execution with ``retriedExecution`` starts and ends ``retry_final``), or ``HANG`` (until
  aborted).
- ``GET execution/{id}/output?offset=N`` answers the log entries from byte ``N`` of the log with
  the new ``offset``, ``completed`` and ``execCompleted``; ``POST execution/{id}/abort``.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import FaultPlan, ServerThread, apply_faults


@dataclass
class RundeckJob:
    project: str
    name: str
    group: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    lines: list[str] = field(default_factory=lambda: ["step 1", "step 2"])
    final: str = "succeeded"
    scheduled_delay: float = 0.0
    line_interval: float = 0.05
    required_options: tuple[str, ...] = ()
    custom_status: str = "warning"
    retry_final: str = "succeeded"


@dataclass
class Execution:
    id: int
    job: RundeckJob
    options: dict[str, str]
    created: float
    final: str
    retried: Execution | None = None
    aborted_at: float | None = None
    retry: Execution | None = None

    def _lines(self) -> list[str]:
        return [f"option {k}={v}" for k, v in self.options.items()] + self.job.lines

    def state(self, now: float) -> tuple[str, list[str], float | None]:
        """Status, the lines printed so far, and the end time (None while not ended)."""
        start = self.created + self.job.scheduled_delay
        lines = self._lines()
        if self.aborted_at is not None and now >= self.aborted_at:
            shown = int((self.aborted_at - start) / self.job.line_interval) + 1
            shown = max(0, min(shown, len(lines)))
            return "aborted", [*lines[:shown], "Execution aborted"], self.aborted_at
        if now < start:
            return "scheduled", [], None
        end = start + len(lines) * self.job.line_interval
        shown = min(int((now - start) / self.job.line_interval) + 1, len(lines))
        if self.final == "HANG" or now < end:
            return "running", lines[:shown], None
        return self.final, lines, end


class FakeRundeck:
    def __init__(self, token: str = "rundeck-secret", min_version: int = 14, max_version: int = 47):
        self.token = token
        self.min_version, self.max_version = min_version, max_version
        self.jobs: dict[str, RundeckJob] = {}
        self.executions: dict[int, Execution] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults = FaultPlan()
        self._next = 1000
        self._lock = threading.RLock()
        app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=["GET", "POST"])])
        self.server = ServerThread(app)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> FakeRundeck:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def add_job(self, project: str, name: str, **kwargs: Any) -> RundeckJob:
        job = RundeckJob(project=project, name=name, **kwargs)
        with self._lock:
            self.jobs[job.id] = job
        return job

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _error(status: int, code: str, message: str, version: int = 0) -> JSONResponse:
        return JSONResponse(
            {"error": True, "apiversion": version, "errorCode": code, "message": message},
            status_code=status,
        )

    async def _dispatch(self, request: Request) -> Response:
        return await apply_faults(self.faults, request, self._handle)

    def _advance(self, now: float) -> None:
        for execution in list(self.executions.values()):
            status, _, _ = execution.state(now)
            if status == "failed-with-retry" and execution.retry is None:
                self._next += 1
                execution.retry = Execution(
                    self._next, execution.job, execution.options, now, execution.job.retry_final
                )
                execution.retry.retried = execution
                self.executions[self._next] = execution.retry

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        self.requests.append((request.method, path))
        m = re.fullmatch(r"/api/(\d+)/(.*)", path)
        if not m:
            return Response("Not Found", status_code=404)
        version, rest = int(m.group(1)), m.group(2).rstrip("/")
        if not self.min_version <= version <= self.max_version:
            return self._error(
                400,
                "api.error.api-version.unsupported",
                f'Unsupported API Version "{version}". API Request: {path}. '
                f"Reason: Current version: {self.max_version}",
                self.max_version,
            )
        if request.headers.get("X-Rundeck-Auth-Token") != self.token:
            return self._error(
                403, "unauthorized", f"(Token:****) is not authorized for: {path}", version
            )
        body: dict[str, Any] = {}
        if request.method == "POST" and await request.body():
            try:
                body = await request.json()
            except ValueError:
                return self._error(400, "api.error.invalid.request", "malformed JSON", version)
        with self._lock:
            now = time.time()
            self._advance(now)
            return self._route(request, rest, body, version, now)

    def _execution_json(self, request: Request, ex: Execution, now: float) -> dict[str, Any]:
        status, _, ended = ex.state(now)
        base = str(request.base_url).rstrip("/")
        data: dict[str, Any] = {
            "id": ex.id,
            "href": f"{base}/api/41/execution/{ex.id}",
            "permalink": f"{base}/project/{ex.job.project}/execution/show/{ex.id}",
            "status": status,
            "project": ex.job.project,
            "job": {"id": ex.job.id, "name": ex.job.name, "group": ex.job.group},
            "date-started": {"unixtime": int(ex.created * 1000)},
            "argstring": " ".join(f"-{k} {v}" for k, v in ex.options.items()),
        }
        if ended is not None:
            data["date-ended"] = {"unixtime": int(ended * 1000)}
        if status == "other":
            data["customStatus"] = ex.job.custom_status
        if ex.retried is not None:
            data["retriedExecution"] = {"id": ex.retried.id}
        return data

    def _route(
        self, request: Request, rest: str, body: dict[str, Any], version: int, now: float
    ) -> Response:
        m = re.fullmatch(r"project/([^/]+)/jobs", rest)
        if m:
            project = m.group(1)
            if not any(j.project == project for j in self.jobs.values()):
                return self._error(
                    404, "api.error.item.doesnotexist", f"Project does not exist: {project}"
                )
            name = request.query_params.get("jobExactFilter")
            group = request.query_params.get("groupPathExact")
            found = [
                {"id": j.id, "name": j.name, "group": j.group, "project": j.project}
                for j in self.jobs.values()
                if j.project == project
                and (name is None or j.name == name)
                and (group is None or j.group == group)
            ]
            return JSONResponse(found)
        m = re.fullmatch(r"job/([^/]+)/(info|run|executions)", rest)
        if m:
            job = self.jobs.get(m.group(1))
            if job is None:
                return self._error(
                    404, "api.error.item.doesnotexist", f"Job ID does not exist: {m.group(1)}"
                )
            if m.group(2) == "info":
                return JSONResponse({"id": job.id, "name": job.name, "project": job.project})
            if m.group(2) == "executions":
                mine = [e for e in self.executions.values() if e.job is job][::-1]
                offset = int(request.query_params.get("offset", 0))
                page = mine[offset : offset + int(request.query_params.get("max", 20))]
                return JSONResponse(
                    {
                        "paging": {"count": len(page), "total": len(mine), "offset": offset},
                        "executions": [self._execution_json(request, e, now) for e in page],
                    }
                )
            if request.method != "POST":
                return Response(status_code=405)
            options = {str(k): str(v) for k, v in (body.get("options") or {}).items()}
            missing = [o for o in job.required_options if o not in options]
            if missing:
                return self._error(
                    400,
                    "api.error.job.options-invalid",
                    f"Job options were not valid: Option '{missing[0]}' is required.",
                )
            self._next += 1
            ex = Execution(self._next, job, options, now, job.final)
            self.executions[ex.id] = ex
            return JSONResponse(self._execution_json(request, ex, now))
        m = re.fullmatch(r"execution/(\d+)(?:/(output|abort))?", rest)
        if m:
            ex = self.executions.get(int(m.group(1)))
            if ex is None:
                return self._error(
                    404, "api.error.item.doesnotexist", f"Execution ID does not exist: {m.group(1)}"
                )
            if m.group(2) is None:
                return JSONResponse(self._execution_json(request, ex, now))
            if m.group(2) == "output":
                return self._output(request, ex, now)
            status, _, ended = ex.state(now)
            if ended is not None:
                return JSONResponse(
                    {
                        "abort": {"status": "failed", "reason": "Job is not running"},
                        "execution": {"id": str(ex.id), "status": status},
                    }
                )
            ex.aborted_at = now
            return JSONResponse(
                {
                    "abort": {"status": "aborted"},
                    "execution": {"id": str(ex.id), "status": "aborted"},
                }
            )
        return self._error(404, "api.error.item.doesnotexist", f"no such resource: {rest}")

    def _output(self, request: Request, ex: Execution, now: float) -> Response:
        status, lines, ended = ex.state(now)
        offset = int(request.query_params.get("offset", "0"))
        entries, position = [], 0
        for line in lines:
            size = len(f"{line}\n".encode())
            if position >= offset:
                entries.append({"log": line, "level": "NORMAL", "node": "localhost"})
            position += size
        completed = ended is not None
        return JSONResponse(
            {
                "id": str(ex.id),
                "offset": str(max(position, offset)),
                "completed": completed,
                "execCompleted": completed,
                "hasFailedNodes": status == "failed",
                "execState": status,
                "totalSize": position,
                "entries": entries,
            }
        )
