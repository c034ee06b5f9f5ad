"""An AWX / Ansible Automation Platform controller following its API's documented behaviour.

- Served under ``/api/v2/`` and, as AAP 2.5+'s gateway does, ``/api/controller/v2/``.
  ``Authorization: Bearer <token>`` is required (401 ``{"detail": "Authentication credentials
  were not provided. …"}`` otherwise); unknown objects answer 404 ``{"detail": "Not found."}``.
- ``GET job_templates/?name=`` (exact name), ``GET job_templates/{id}/``, ``POST
  job_templates/{id}/launch/`` with ``{"extra_vars": {…}}`` -> 201 ``{"job": id,
  "ignored_fields": {…}, …the job…}``. As AWX does, variables the template does not prompt for
  (``ask_variables_on_launch``) and its survey does not name are *ignored* - and the job is
  created anyway. A workflow job template refuses them instead (400, field errors). ``GET
  job_templates/{id}/jobs/?order_by=-id``; the same under ``workflow_job_templates``.
- A job is ``pending`` then ``waiting`` for ``pending_delay`` s, ``running`` while it emits its
  events (one line every ``line_interval`` s), then ends ``final`` (``successful``, ``failed``,
  ``error`` with ``job_explanation``, or ``HANG``: runs until canceled). ``event_lag`` s after it
  ends ``event_processing_finished`` turns true; ``late_event`` (an index) is an event saved only
  then, so that while the job runs its output has a gap, as AWX's asynchronous event saving does.
- ``GET jobs/{id}/job_events/?order_by=start_line&start_line__gte=&page_size=&page=``: events
  with ``stdout``, ``start_line``, ``end_line``, ``counter``. ``POST jobs/{id}/cancel/`` -> 202,
  or 405 once the job has ended.
- A workflow job runs its template's nodes one after the other (a failed node fails the
  workflow); ``GET workflow_jobs/{id}/workflow_nodes/``; canceling it cancels the running node.

Every launch is recorded in :attr:`FakeAwx.launches` with its extra_vars, so that tests count
what AWX was asked to start.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import FaultPlan, ServerThread, apply_faults

PREFIXES = ("/api/v2/", "/api/controller/v2/")
NOT_AUTHENTICATED = (
    "Authentication credentials were not provided. To establish a login session, visit /api/login/."
)
ACTIVE = ("new", "pending", "waiting", "running")


@dataclass
class Template:
    id: int
    name: str
    kind: str  # "job" or "workflow_job"
    organization: str = "Default"
    ask_variables_on_launch: bool = True
    survey: tuple[str, ...] | None = None  # the survey's variable names (None: no survey)
    lines: list[str] = field(default_factory=lambda: ["TASK [step 1]", "TASK [step 2]"])
    final: str = "successful"
    job_explanation: str = ""
    pending_delay: float = 0.0
    line_interval: float = 0.05
    event_lag: float = 0.0
    late_event: int | None = None
    nodes: list[int] = field(default_factory=list)  # workflow: job template ids, in order


@dataclass
class Event:
    counter: int
    stdout: str
    start_line: int
    end_line: int
    at: float  # when it is saved (visible)


@dataclass
class UJob:
    id: int
    kind: str
    template: Template
    extra_vars: dict[str, Any]
    created: float
    canceled_at: float | None = None
    children: list[UJob] = field(default_factory=list)  # workflow: spawned node jobs
    parent_node_ids: list[int] = field(default_factory=list)
    ended_at: float | None = None
    final: str | None = None

    # ---- a playbook job over time

    def _stdouts(self) -> list[str]:
        shown = [f"{k}={v}" for k, v in sorted(self.extra_vars.items())]
        return [
            "",  # playbook_on_start: no stdout
            "\x1b[0;32mPLAY [ascob] ****\x1b[0m",
            *shown,
            *self.template.lines,
            "PLAY RECAP ****\r\nlocalhost : ok=2",  # one event over two lines
        ]

    def _plan(self) -> tuple[float, list[Event], float | None]:
        """Start time, the events (with their save times), and the natural end (None: HANG)."""
        t = self.template
        start = self.created + t.pending_delay
        events, line, at = [], 0, start
        for i, stdout in enumerate(self._stdouts()):
            lines = len(stdout.split("\r\n")) if stdout else 0
            events.append(Event(i + 1, stdout, line, line + lines, at))
            line += lines
            at += t.line_interval
        end = None if t.final == "HANG" else at
        return start, events, end

    def state(self, now: float) -> tuple[str, list[Event], bool]:
        """Status, the events saved so far, and event_processing_finished."""
        if self.kind == "workflow_job":
            return self._workflow_state(now), [], False
        start, events, end = self._plan()
        stop = self.canceled_at
        if stop is not None and (end is None or stop < end) and now >= stop:
            ended, status = stop, "canceled"
        elif end is not None and now >= end:
            ended, status = end, self.template.final
        elif now < start:
            waiting = now >= self.created + self.template.pending_delay / 2
            return ("waiting" if waiting else "pending"), [], False
        else:
            return "running", self._visible(events, now, None), False
        events = [e for e in events if e.at < ended or (status != "canceled" and e.at <= ended)]
        finished = now >= ended + self.template.event_lag
        return status, self._visible(events, now, ended if finished else None), finished

    def _visible(self, events: list[Event], now: float, finished: float | None) -> list[Event]:
        late = self.template.late_event
        shown = []
        for i, event in enumerate(events):
            if event.at > now:
                continue
            if i == late and finished is None:
                continue  # saved only once event processing finishes
            shown.append(event)
        return shown

    # ---- a workflow job

    def _workflow_state(self, now: float) -> str:
        if self.final is not None:
            return self.final
        if not self.children:
            return "pending"
        return "running"


class FakeAwx:
    def __init__(self, token: str = "awx-secret") -> None:
        self.token = token
        self.templates: dict[int, Template] = {}
        self.jobs: dict[int, UJob] = {}
        self.launches: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.faults = FaultPlan()
        self._ids = iter(range(100, 10**9))
        self._node_ids = iter(range(5000, 10**9))
        self._lock = threading.RLock()
        app = Starlette(
            routes=[Route("/{path:path}", self._dispatch, methods=["GET", "POST", "DELETE"])]
        )
        self.server = ServerThread(app)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> FakeAwx:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def add_template(self, name: str, kind: str = "job", **kwargs: Any) -> Template:
        with self._lock:
            template = Template(next(self._ids), name, kind, **kwargs)
            self.templates[template.id] = template
        return template

    def launches_of(self, template: Template) -> list[dict[str, Any]]:
        return [launch for launch in self.launches if launch["template"] == template.id]

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _detail(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    async def _dispatch(self, request: Request) -> Response:
        return await apply_faults(self.faults, request, self._handle)

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        self.requests.append((request.method, path))
        prefix = next((p for p in PREFIXES if path.startswith(p)), None)
        if prefix is None:
            return self._detail(404, "The requested resource could not be found.")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._detail(401, NOT_AUTHENTICATED)
        body: dict[str, Any] = {}
        if request.method == "POST" and await request.body():
            try:
                body = await request.json()
            except ValueError:
                return self._detail(400, "JSON parse error - Expecting value")
        with self._lock:
            now = time.time()
            self._advance(now)
            return self._route(request, prefix, path[len(prefix) :].rstrip("/"), body, now)

    def _advance(self, now: float) -> None:
        """Move workflow jobs along their nodes."""
        for wf in [j for j in self.jobs.values() if j.kind == "workflow_job"]:
            if wf.final is not None:
                continue
            if wf.canceled_at is not None:
                for child in wf.children:
                    if child.state(now)[0] in ACTIVE and child.canceled_at is None:
                        child.canceled_at = now
                if all(c.state(now)[0] not in ACTIVE for c in wf.children):
                    wf.final = "canceled"
                continue
            if wf.children:
                status = wf.children[-1].state(now)[0]
                if status in ACTIVE:
                    continue
                if status != "successful":
                    wf.final = "failed"
                    continue
            if now < wf.created + wf.template.pending_delay:
                continue
            done = len(wf.children)
            if done == len(wf.template.nodes):
                wf.final = "successful"
                continue
            child_template = self.templates[wf.template.nodes[done]]
            child = UJob(next(self._ids), "job", child_template, dict(wf.extra_vars), now)
            self.jobs[child.id] = child
            wf.children.append(child)
            wf.parent_node_ids.append(next(self._node_ids))

    def _template_json(self, t: Template) -> dict[str, Any]:
        return {
            "id": t.id,
            "type": "job_template" if t.kind == "job" else "workflow_job_template",
            "name": t.name,
            "ask_variables_on_launch": t.ask_variables_on_launch,
            "survey_enabled": t.survey is not None,
            "summary_fields": {"organization": {"id": 1, "name": t.organization}},
        }

    def _job_json(self, job: UJob, now: float, detail: bool = True) -> dict[str, Any]:
        status, _, finished = job.state(now)
        explanation = ""
        if status in ("failed", "error") and job.kind == "job":
            explanation = job.template.job_explanation
        if status == "failed" and job.kind == "workflow_job":
            explanation = "No error handling path for workflow job node(s) [%s]." % (
                job.parent_node_ids[-1] if job.parent_node_ids else ""
            )
        if status == "canceled":
            explanation = "Job canceled by user request"
        data: dict[str, Any] = {
            "id": job.id,
            "type": job.kind,
            "url": f"/api/v2/{job.kind}s/{job.id}/",
            "name": job.template.name,
            "status": status,
            "failed": status in ("failed", "error"),
            "job_explanation": explanation,
            "extra_vars": json.dumps(job.extra_vars),
        }
        key = "job_template" if job.kind == "job" else "workflow_job_template"
        data[key] = job.template.id
        if detail and job.kind == "job":
            data["event_processing_finished"] = finished
        return data

    @staticmethod
    def _page(request: Request, items: list[dict[str, Any]]) -> JSONResponse:
        size = min(int(request.query_params.get("page_size", "25")), 200)
        page = int(request.query_params.get("page", "1"))
        chunk = items[(page - 1) * size : page * size]
        more = page * size < len(items)
        return JSONResponse(
            {
                "count": len(items),
                "next": f"{request.url.path}?page={page + 1}&page_size={size}" if more else None,
                "previous": None,
                "results": chunk,
            }
        )

    def _route(
        self, request: Request, prefix: str, rest: str, body: dict[str, Any], now: float
    ) -> Response:
        m = re.fullmatch(r"(job_templates|workflow_job_templates)(?:/(\d+)(?:/(\w+))?)?", rest)
        if m:
            kind = "job" if m.group(1) == "job_templates" else "workflow_job"
            if m.group(2) is None:
                name = request.query_params.get("name")
                found = [
                    self._template_json(t)
                    for t in self.templates.values()
                    if t.kind == kind and (name is None or t.name == name)
                ]
                return self._page(request, found)
            template = self.templates.get(int(m.group(2)))
            if template is None or template.kind != kind:
                return self._detail(404, "Not found.")
            sub = m.group(3)
            if sub is None:
                return JSONResponse(self._template_json(template))
            if sub in ("jobs", "workflow_jobs"):
                mine = [j for j in self.jobs.values() if j.template is template]
                mine.sort(key=lambda j: -j.id)
                return self._page(request, [self._job_json(j, now, False) for j in mine])
            if sub == "launch" and request.method == "POST":
                return self._launch(template, body, now)
            return self._detail(404, "Not found.")
        m = re.fullmatch(r"(jobs|workflow_jobs)/(\d+)(?:/(\w+))?", rest)
        if m:
            kind = m.group(1)[:-1]
            job = self.jobs.get(int(m.group(2)))
            if job is None or job.kind != kind:
                return self._detail(404, "Not found.")
            sub = m.group(3)
            if sub is None:
                return JSONResponse(self._job_json(job, now))
            if sub == "cancel" and request.method == "POST":
                if job.state(now)[0] not in ACTIVE:
                    return self._detail(405, 'Method "POST" not allowed.')
                job.canceled_at = now
                self._advance(now)
                return Response(status_code=202)
            if sub == "job_events" and kind == "job":
                return self._events(request, job, now)
            if sub == "workflow_nodes" and kind == "workflow_job":
                return self._page(request, self._nodes(job, now))
        return self._detail(404, "Not found.")

    def _launch(self, template: Template, body: dict[str, Any], now: float) -> Response:
        given = body.get("extra_vars") or {}
        if isinstance(given, str):
            given = json.loads(given or "{}")
        accepted: dict[str, Any] = {}
        ignored: dict[str, Any] = {}
        for key, value in given.items():
            if template.ask_variables_on_launch or key in (template.survey or ()):
                accepted[key] = value
            else:
                ignored[key] = value
        if ignored and template.kind == "workflow_job":
            names = ", ".join(ignored)
            return JSONResponse(
                {
                    "extra_vars": [
                        f"Variables {names} are not allowed on launch. Check the Prompt on Launch "
                        "setting on the Workflow Job Template to include Extra Variables."
                    ]
                },
                status_code=400,
            )
        job = UJob(next(self._ids), template.kind, template, accepted, now)
        self.jobs[job.id] = job
        self.launches.append({"template": template.id, "job": job.id, "extra_vars": dict(given)})
        answer: dict[str, Any] = {
            template.kind: job.id,
            "ignored_fields": {"extra_vars": ignored} if ignored else {},
        }
        answer.update(self._job_json(job, now))
        return JSONResponse(answer, status_code=201)

    def _events(self, request: Request, job: UJob, now: float) -> Response:
        _, events, _ = job.state(now)
        since = int(request.query_params.get("start_line__gte", "0"))
        shown = sorted(
            (e for e in events if e.start_line >= since), key=lambda e: (e.start_line, e.counter)
        )
        items = [
            {
                "id": job.id * 10_000 + e.counter,
                "type": "job_event",
                "job": job.id,
                "counter": e.counter,
                "event": "runner_on_ok" if e.stdout else "playbook_on_start",
                "stdout": e.stdout,
                "start_line": e.start_line,
                "end_line": e.end_line,
            }
            for e in shown
        ]
        return self._page(request, items)

    def _nodes(self, wf: UJob, now: float) -> list[dict[str, Any]]:
        nodes = []
        for i, template_id in enumerate(wf.template.nodes):
            child = wf.children[i] if i < len(wf.children) else None
            node: dict[str, Any] = {
                "id": wf.id * 100 + i,
                "type": "workflow_job_node",
                "unified_job_template": template_id,
                "job": child.id if child else None,
                "do_not_run": False,
                "summary_fields": {},
            }
            if child is not None:
                node["summary_fields"]["job"] = {
                    "id": child.id,
                    "name": child.template.name,
                    "status": child.state(now)[0],
                    "type": child.kind,
                }
            nodes.append(node)
        return nodes
