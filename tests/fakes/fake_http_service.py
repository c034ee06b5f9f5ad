"""A small home-grown job service, the kind ``httpBackend`` is for, on loopback.

- ``Authorization: Bearer <token>`` on every request, else 401 ``{"error": "unauthorized"}``.
- ``POST /jobs`` with ``{"task": name, "ref": str, "params": {...}}``: 201
  ``{"job": {"id", "status"}}`` and ``Location: /jobs/{id}``. An unknown task is 422, a body
  that is not JSON 400. ``Idempotency-Key`` is honoured: a repeated key answers as the first
  time (201, with ``Idempotent-Replayed: true``) with the job that key made, and makes nothing.
- ``GET /jobs/{id}``: ``{"job": {"id", "task", "status", "error", "log"}}``; status goes
  ``waiting`` (``queue_delay`` s) → ``working`` (one log line every ``line_interval`` s) → the
  task's ``final`` (``ok``, ``error``, any other word; ``HANG``: working until cancelled).
- ``GET /jobs/{id}/log?offset=N``: text/plain, the log from byte N.
- ``POST /jobs/{id}/cancel``: the job ends ``cancelled`` (a ``stubborn`` task ignores it);
  ``?force=1``: ends ``killed`` at once. A job already over: 409. Unknown job: 404.

Every request may meet a fault from the :class:`FaultPlan`. ``jobs`` records every job made, with
the ``ref`` ASCOB sent, so tests count "never started twice"; ``start_attempts`` every start
request received (faults included), ``start_requests`` those the service acted on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.fakes.server import FaultPlan, ServerThread, apply_faults


@dataclass
class Task:
    name: str
    lines: list[str] = field(default_factory=lambda: ["step 1", "step 2"])
    final: str = "ok"
    queue_delay: float = 0.0
    line_interval: float = 0.05
    stubborn: bool = False
    error: str = "step 2 exited with 3"


@dataclass
class ServiceJob:
    id: str
    task: Task
    ref: str
    params: dict[str, str]
    created: float
    idempotency_key: str | None = None
    cancel_requests: list[str] = field(default_factory=list)
    ended_at: float | None = None
    ended_as: str | None = None

    def _lines(self) -> list[str]:
        return [f"{k}={v}" for k, v in sorted(self.params.items())] + self.task.lines

    def state(self, now: float) -> tuple[str, list[str]]:
        start = self.created + self.task.queue_delay
        lines = self._lines()
        if self.ended_at is not None and now >= self.ended_at and self.ended_as is not None:
            shown = max(0, min(len(lines), int((self.ended_at - start) / self.task.line_interval)))
            return self.ended_as, [*lines[:shown], f"job {self.ended_as}"]
        if now < start:
            return "waiting", []
        shown = min(int((now - start) / self.task.line_interval) + 1, len(lines))
        end = start + len(lines) * self.task.line_interval
        if self.task.final == "HANG" or now < end:
            return "working", lines[:shown]
        return self.task.final, lines

    def log(self, now: float) -> str:
        return "".join(f"{line}\n" for line in self.state(now)[1])


class FakeHttpService:
    def __init__(self, token: str = "service-secret") -> None:
        self.token = token
        self.tasks: dict[str, Task] = {}
        self.jobs: dict[str, ServiceJob] = {}
        self.faults = FaultPlan()
        self.start_requests: list[dict[str, Any]] = []  # those that reached the service
        self.start_attempts: list[str | None] = []  # every POST /jobs (its Idempotency-Key)
        self._next = 100
        self._lock = threading.RLock()
        routes = [
            Route("/jobs", self._wrap(self._create), methods=["POST"]),
            Route("/jobs/{id}", self._wrap(self._show), methods=["GET"]),
            Route("/jobs/{id}/log", self._wrap(self._log), methods=["GET"]),
            Route("/jobs/{id}/cancel", self._wrap(self._cancel), methods=["POST"]),
        ]
        self.server = ServerThread(Starlette(routes=routes))

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> FakeHttpService:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def add_task(self, name: str, **kwargs: Any) -> Task:
        task = Task(name, **kwargs)
        with self._lock:
            self.tasks[name] = task
        return task

    def jobs_of(self, task: str) -> list[ServiceJob]:
        with self._lock:
            return [j for j in self.jobs.values() if j.task.name == task]

    # ------------------------------------------------------------------ plumbing

    def _wrap(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            if request.method == "POST" and request.url.path == "/jobs":
                self.start_attempts.append(request.headers.get("Idempotency-Key"))

            async def checked(request: Request) -> Response:
                if request.headers.get("Authorization") != f"Bearer {self.token}":
                    return JSONResponse({"error": "unauthorized"}, status_code=401)
                with self._lock:
                    return await handler(request, time.time())

            return await apply_faults(self.faults, request, checked)

        return endpoint

    def _job(self, request: Request) -> ServiceJob | Response:
        job = self.jobs.get(request.path_params["id"])
        if job is None:
            return JSONResponse({"error": f"no job {request.path_params['id']!r}"}, status_code=404)
        return job

    def _json(self, job: ServiceJob, now: float) -> dict[str, Any]:
        status, _ = job.state(now)
        data: dict[str, Any] = {"id": job.id, "task": job.task.name, "status": status}
        data["error"] = job.task.error if status == "error" else None
        data["log"] = job.log(now)
        return data

    async def _create(self, request: Request, now: float) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        self.start_requests.append({"headers": dict(request.headers), "body": body})
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            for job in self.jobs.values():
                if job.idempotency_key == key:
                    return JSONResponse(  # the first answer again, marked as a replay
                        {"job": self._json(job, now)},
                        status_code=201,
                        headers={"Location": f"/jobs/{job.id}", "Idempotent-Replayed": "true"},
                    )
        task = self.tasks.get(str(body.get("task")))
        if task is None:
            return JSONResponse(
                {"error": f"unknown task {body.get('task')!r}", "tasks": sorted(self.tasks)},
                status_code=422,
            )
        self._next += 1
        params = {str(k): str(v) for k, v in (body.get("params") or {}).items()}
        job = ServiceJob(f"j-{self._next}", task, str(body.get("ref")), params, now, key)
        self.jobs[job.id] = job
        return JSONResponse(
            {"job": self._json(job, now)}, status_code=201, headers={"Location": f"/jobs/{job.id}"}
        )

    async def _show(self, request: Request, now: float) -> Response:
        job = self._job(request)
        if isinstance(job, Response):
            return job
        return JSONResponse({"job": self._json(job, now)})

    async def _log(self, request: Request, now: float) -> Response:
        job = self._job(request)
        if isinstance(job, Response):
            return job
        offset = int(request.query_params.get("offset", "0"))
        return PlainTextResponse(job.log(now).encode()[offset:])

    async def _cancel(self, request: Request, now: float) -> Response:
        job = self._job(request)
        if isinstance(job, Response):
            return job
        force = request.query_params.get("force") == "1"
        job.cancel_requests.append("force" if force else "cancel")
        status, _ = job.state(now)
        if status not in ("waiting", "working"):
            return JSONResponse({"error": f"job {job.id} is already {status}"}, status_code=409)
        if force:
            job.ended_at, job.ended_as = now, "killed"
        elif not job.task.stubborn:
            job.ended_at, job.ended_as = now + 0.2, "cancelled"
        return JSONResponse({"job": self._json(job, now)}, status_code=202)
