"""A Jenkins that follows the remote access API's documented behaviour, on loopback.

- ``POST /job/a/job/b/buildWithParameters`` (a parameterized job; otherwise 500 "not
  parameterized") and ``POST …/build`` (a job without parameters; a parameterized one answers
  400 "expects a form submission") answer 201 with ``Location: …/queue/item/N/``; the item
  waits ``queue_delay`` seconds, then becomes a build (or is cancelled). Identical requests
  (same declared parameters; for a job without parameters, any request) that find an item of
  the job still waiting are merged into it and answered with that item, as Jenkins does;
  undeclared parameters are dropped. Every trigger is recorded in ``triggers`` (time, job,
  parameters, the item answered, whether it was merged).
- Builds carry the ``queueId`` of the item they came from (build and job JSON).
- ``GET /queue/api/json``: the items still in the queue, each with its ``task`` (name, url).
- ``GET /queue/item/N/api/json``: a waiting item (``why``) or a left item (``cancelled``,
  ``executable.number``); left items are forgotten after ``forget_after`` seconds (404).
- Basic auth (401 otherwise); CSRF crumbs from ``/crumbIssuer/api/json``, tied to the session
  cookie, required on every POST when ``crumbs`` is on (403 "No valid crumb"); 404 otherwise.
- Builds print their lines one every ``line_interval`` seconds; ``logText/progressiveText?start=``
  answers from that byte with ``X-Text-Size`` and, while building, ``X-More-Data: true``.
- ``stop`` aborts a build (a ``stubborn`` one ignores it); ``term`` and ``kill`` exist only on
  ``pipeline`` jobs; ``/queue/cancelItem?id=`` cancels a waiting item.
"""

from __future__ import annotations

import base64
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import FaultPlan, ServerThread, apply_faults


@dataclass
class JenkinsJob:
    path: str
    parameters: dict[str, str] = field(default_factory=lambda: {"ASCOB_RUN": ""})
    lines: list[str] = field(default_factory=lambda: ["step 1", "step 2"])
    result: str = "SUCCESS"  # or "HANG": runs until stopped
    queue_delay: float = 0.0
    line_interval: float = 0.05
    cancel_in_queue: bool = False
    buildable: bool = True
    pipeline: bool = False
    stubborn: bool = False


@dataclass
class QueueItem:
    id: int
    job: JenkinsJob
    params: dict[str, str]
    created: float
    cancelled: bool = False
    left_at: float | None = None
    build: Build | None = None


@dataclass(frozen=True)
class Trigger:
    at: float
    path: str
    params: dict[str, str]
    item_id: int
    merged: bool


@dataclass
class Build:
    number: int
    job: JenkinsJob
    params: dict[str, str]
    started: float
    queue_id: int = 0
    stopped_at: float | None = None
    actions: list[str] = field(default_factory=list)

    def _all_lines(self) -> list[str]:
        head = [f"Started by remote host; {k}={v}" for k, v in self.params.items()]
        return ["Building in workspace", *head, *self.job.lines]

    def _timeline(self, now: float) -> tuple[list[str], bool, str | None]:
        lines = self._all_lines()
        interval = self.job.line_interval
        if self.stopped_at is not None and now >= self.stopped_at:
            shown = min(int((self.stopped_at - self.started) / interval) + 1, len(lines))
            return [*lines[:shown], "Aborted by user", "Finished: ABORTED"], False, "ABORTED"
        shown = int((now - self.started) / interval) + 1
        if shown < len(lines) or self.job.result == "HANG":
            return lines[: min(shown, len(lines))], True, None
        return [*lines, f"Finished: {self.job.result}"], False, self.job.result

    def console(self, now: float) -> tuple[bytes, bool]:
        lines, building, _ = self._timeline(now)
        return "".join(f"{line}\n" for line in lines).encode(), building

    def state(self, now: float) -> tuple[bool, str | None]:
        _, building, result = self._timeline(now)
        return building, result


class FakeJenkins:
    def __init__(self, user: str = "ascob", token: str = "jenkins-secret", crumbs: bool = True):
        self.users = {user: token}
        self.crumbs = crumbs
        self.forget_after = 300.0
        self.jobs: dict[str, JenkinsJob] = {}
        self.queue: dict[int, QueueItem] = {}
        self.builds: dict[str, list[Build]] = {}
        self.requests: list[tuple[str, str]] = []
        self.triggers: list[Trigger] = []
        self.faults = FaultPlan()
        self._sessions: dict[str, str] = {}
        self._next_item = 100
        self._lock = threading.RLock()
        app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=["GET", "POST"])])
        self.server = ServerThread(app)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> FakeJenkins:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def add_job(self, path: str, **kwargs: Any) -> JenkinsJob:
        job = JenkinsJob(path=path, **kwargs)
        with self._lock:
            self.jobs[path] = job
            self.builds.setdefault(path, [])
        return job

    def build(self, path: str, number: int) -> Build:
        return next(b for b in self.builds[path] if b.number == number)

    def triggers_of(self, path: str) -> list[Trigger]:
        with self._lock:
            return [t for t in self.triggers if t.path == path]

    def item(self, item_id: int) -> QueueItem:
        with self._lock:
            return self.queue[item_id]

    # ------------------------------------------------------------------ plumbing

    def _advance(self, now: float) -> None:
        for item in list(self.queue.values()):
            if item.left_at is None and now >= item.created + item.job.queue_delay:
                item.left_at = now
                if item.job.cancel_in_queue:
                    item.cancelled = True
                    continue
                builds = self.builds[item.job.path]
                item.build = Build(len(builds) + 1, item.job, item.params, now, item.id)
                builds.append(item.build)
            elif item.left_at is not None and now > item.left_at + self.forget_after:
                del self.queue[item.id]

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, token = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return self.users.get(user) == token

    def _base(self, request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def _dispatch(self, request: Request) -> Response:
        return await apply_faults(self.faults, request, self._handle)

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        self.requests.append((request.method, path))
        if not self._authorized(request):
            return Response(
                "<html><head><title>Error 401 Unauthorized</title></head><body>"
                "Invalid password/token for user</body></html>",
                status_code=401,
                media_type="text/html",
                headers={"WWW-Authenticate": 'Basic realm="Jenkins"'},
            )
        if path.rstrip("/") == "/crumbIssuer/api/json":
            return self._crumb(request)
        if request.method == "POST" and self.crumbs:
            session = request.cookies.get("JSESSIONID", "")
            if not session or request.headers.get("Jenkins-Crumb") != self._sessions.get(session):
                return Response(
                    "<html><head><title>Error 403 No valid crumb was included in the request"
                    "</title></head></html>",
                    status_code=403,
                    media_type="text/html",
                )
        with self._lock:
            now = time.time()
            self._advance(now)
            return await self._route(request, path, now)

    def _crumb(self, request: Request) -> Response:
        if not self.crumbs:
            return Response("Not Found", status_code=404)
        session = request.cookies.get("JSESSIONID") or secrets.token_hex(8)
        crumb = self._sessions.setdefault(session, secrets.token_hex(16))
        response = JSONResponse(
            {
                "_class": "hudson.security.csrf.DefaultCrumbIssuer",
                "crumb": crumb,
                "crumbRequestField": "Jenkins-Crumb",
            }
        )
        response.set_cookie("JSESSIONID", session)
        return response

    async def _route(self, request: Request, path: str, now: float) -> Response:
        if path.rstrip("/") == "/queue/api/json":
            return self._queue_json(request)
        m = re.fullmatch(r"/queue/item/(\d+)/api/json", path)
        if m:
            return self._queue_item(request, int(m.group(1)))
        if path.rstrip("/") == "/queue/cancelItem" and request.method == "POST":
            item = self.queue.get(int(request.query_params.get("id", "0")))
            if item is not None and item.left_at is None:
                item.cancelled, item.left_at = True, now
            return Response(status_code=204)
        m = re.fullmatch(r"((?:/job/[^/]+)+)(?:/(.*))?", path)
        if not m:
            return Response("Not Found", status_code=404)
        job_path = "/".join(unquote(s) for s in m.group(1).split("/job/")[1:])
        rest = (m.group(2) or "").rstrip("/")
        job = self.jobs.get(job_path)
        if job is None:
            return Response("<title>Error 404 Not Found</title>", status_code=404)
        if rest == "api/json":
            return self._job_json(request, job)
        if rest in ("build", "buildWithParameters") and request.method == "POST":
            return await self._trigger(request, job, now, rest)
        m = re.fullmatch(r"(\d+)(?:/(.*))?", rest)
        if not m:
            return Response("Not Found", status_code=404)
        try:
            build = self.build(job_path, int(m.group(1)))
        except StopIteration:
            return Response("Not Found", status_code=404)
        action = m.group(2) or ""
        if action == "api/json":
            building, result = build.state(now)
            return JSONResponse(
                {
                    "_class": "hudson.model.FreeStyleBuild",
                    "number": build.number,
                    "queueId": build.queue_id,
                    "url": f"{self._base(request)}{path.removesuffix('/api/json')}/",
                    "building": building,
                    "result": result,
                    "actions": [
                        {
                            "_class": "hudson.model.ParametersAction",
                            "parameters": [
                                {"name": k, "value": v} for k, v in build.params.items()
                            ],
                        }
                    ],
                }
            )
        if action == "logText/progressiveText":
            data, building = build.console(now)
            start = int(request.query_params.get("start", "0"))
            headers = {"X-Text-Size": str(len(data))}
            if building:
                headers["X-More-Data"] = "true"
            return Response(data[start:], media_type="text/plain", headers=headers)
        if action in ("stop", "term", "kill") and request.method == "POST":
            if action != "stop" and not job.pipeline:
                return Response("Not Found", status_code=404)
            build.actions.append(action)
            building, _ = build.state(now)
            if building and (action != "stop" or not job.stubborn):
                build.stopped_at = now
            return Response(status_code=302, headers={"Location": f"{path.rsplit('/', 1)[0]}/"})
        return Response("Not Found", status_code=404)

    def _job_json(self, request: Request, job: JenkinsJob) -> Response:
        builds = self.builds[job.path]
        return JSONResponse(
            {
                "_class": "hudson.model.FreeStyleProject",
                "name": job.path.rsplit("/", 1)[-1],
                "fullName": job.path,
                "buildable": job.buildable,
                "property": [
                    {
                        "_class": "hudson.model.ParametersDefinitionProperty",
                        "parameterDefinitions": [
                            {"name": n, "defaultParameterValue": {"value": d}}
                            for n, d in job.parameters.items()
                        ],
                    }
                ]
                if job.parameters
                else [],
                "builds": [
                    {
                        "number": b.number,
                        "queueId": b.queue_id,
                        "actions": [
                            {"parameters": [{"name": k, "value": v} for k, v in b.params.items()]}
                        ],
                    }
                    for b in reversed(builds)
                ],
            }
        )

    async def _trigger(self, request: Request, job: JenkinsJob, now: float, how: str) -> Response:
        if not job.buildable:
            return Response("<title>Error 409 Conflict</title>", status_code=409)
        if how == "buildWithParameters" and not job.parameters:
            return Response(
                "<title>Error 500 Server Error</title> java.lang.IllegalStateException: "
                "This build is not parameterized!",
                status_code=500,
            )
        if how == "build" and job.parameters:
            return Response(
                "<title>Error 400 Bad Request</title> This page expects a form submission",
                status_code=400,
            )
        form = parse_qsl((await request.body()).decode(), keep_blank_values=True)
        sent = {**dict(request.query_params), **dict(form)}
        params = {name: sent.get(name, default) for name, default in job.parameters.items()}
        merged = False
        for item in self.queue.values():  # Jenkins merges identical waiting requests
            if item.job is job and item.left_at is None and item.params == params:
                merged = True
                break
        else:
            self._next_item += 1
            item = QueueItem(self._next_item, job, params, now)
            self.queue[item.id] = item
        self.triggers.append(Trigger(now, job.path, params, item.id, merged))
        return Response(
            status_code=201, headers={"Location": f"{self._base(request)}/queue/item/{item.id}/"}
        )

    def _task(self, request: Request, job: JenkinsJob) -> dict[str, str]:
        segments = "".join(f"/job/{s}" for s in job.path.split("/"))
        return {
            "_class": "hudson.model.FreeStyleProject",
            "name": job.path.rsplit("/", 1)[-1],
            "url": f"{self._base(request)}{segments}/",
        }

    def _queue_json(self, request: Request) -> Response:
        waiting = [i for i in self.queue.values() if i.left_at is None]
        return JSONResponse(
            {
                "_class": "hudson.model.Queue",
                "discoverableItems": [],
                "items": [
                    {
                        "_class": "hudson.model.Queue$WaitingItem",
                        "id": i.id,
                        "blocked": False,
                        "buildable": False,
                        "inQueueSince": int(i.created * 1000),
                        "params": "".join(f"\n{k}={v}" for k, v in i.params.items()),
                        "task": self._task(request, i.job),
                        "url": f"queue/item/{i.id}/",
                        "why": "In the quiet period. Expires in 1 sec",
                    }
                    for i in waiting
                ],
            }
        )

    def _queue_item(self, request: Request, item_id: int) -> Response:
        item = self.queue.get(item_id)
        if item is None:
            return Response("Not Found", status_code=404)
        task = self._task(request, item.job)
        if item.left_at is None:
            return JSONResponse(
                {
                    "_class": "hudson.model.Queue$WaitingItem",
                    "id": item.id,
                    "blocked": False,
                    "buildable": False,
                    "why": "In the quiet period. Expires in 1 sec",
                    "inQueueSince": int(item.created * 1000),
                    "task": task,
                }
            )
        executable = None
        if item.build is not None:
            executable = {
                "_class": "hudson.model.FreeStyleBuild",
                "number": item.build.number,
                "url": f"{self._base(request)}/job/{item.job.path}/{item.build.number}/",
            }
        return JSONResponse(
            {
                "_class": "hudson.model.Queue$LeftItem",
                "id": item.id,
                "cancelled": item.cancelled,
                "executable": executable,
                "task": task,
            }
        )
