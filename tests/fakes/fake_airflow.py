"""An Airflow that follows its REST API's documented behaviour, on loopback: ``api="v1"`` speaks
the Airflow 2 stable REST API (``/api/v1``), ``api="v2"`` the Airflow 3 public API (``/api/v2``).

- Auth: v1 takes basic auth; v2 takes a JWT from ``POST /auth/token`` (201 ``access_token``,
  401 ``Invalid credentials``), answering 401 ``Not authenticated`` / ``Token Expired`` and 403
  ``Invalid JWT token``; both take the static ``bearer`` token. ``expire_tokens()`` expires every
  JWT issued so far, as a server-side lifetime or key change would.
- Errors: v1 answers RFC 7807 problems (``title``, ``detail``, ``status``, ``type``), v2 FastAPI's
  ``{"detail": ...}`` (a list of validation errors for 422, an object for a 409 unique violation).
- ``GET /dags/{id}`` (``is_paused``); ``POST /dags/{id}/dagRuns``: v2 requires ``logical_date``
  (may be null) and refuses unknown fields (422), v1 refuses unknown fields (400); a second run of
  the same ``dag_run_id`` is 409. Every created run is recorded in ``created``.
- A run waits ``queue_delay`` in ``queued`` (forever while its DAG is paused), then runs its tasks
  one after the other; each task prints the conf (first task only) and its lines, one every
  ``line_interval`` s, then ends ``success`` or ``failed`` (a ``hang`` task runs until stopped).
- ``PATCH /dags/{id}/dagRuns/{run}`` ``{"state": "failed"}``: the run fails, a running task fails
  ("externally set to failed"), tasks not started are skipped. v2 also takes ``note`` there; v1
  takes it at ``PATCH …/setNote``.
- ``…/taskInstances`` (paged by ``limit``/``offset``), ``…/taskInstances/{task}/logs/{try}``: v1
  answers text/plain (or JSON with the log as one string), v2 JSON ``content`` (structured log
  messages) with a ``continuation_token`` while more may come, ``log_page_size`` entries a page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
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

STOPPED_LINE = "State of this instance has been externally set to failed. Terminating instance."
# Airflow 3.3.2: a stopped task's process logs on until it is killed, then this
KILLED_LINE = "Task killed!"
EXCEPTION = "Bash command failed. The command returned a non-zero exit code 3."
V1_REMOVED = (
    "/api/v1 has been removed in Airflow 3, please use its upgraded version /api/v2 instead."
)


_NEVER_RAN = ("skipped", "upstream_failed")


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class FakeTask:
    task_id: str
    lines: list[str] = field(default_factory=lambda: ["step 1", "step 2"])
    result: str = "success"  # "failed", or "hang": runs until stopped


@dataclass
class FakeDag:
    dag_id: str
    tasks: list[FakeTask]
    is_paused: bool = False
    queue_delay: float = 0.0
    line_interval: float = 0.05
    kill_delay: float = 0.0  # v2: a stopped task's process logs on this long, then is killed
    max_active_runs: int = 16


@dataclass
class TaskSnap:
    task_id: str
    state: str | None
    start: float | None
    end: float | None
    lines: list[tuple[float, str]]
    stopped: bool = False  # marked failed by a stop (its process may log on: ``killed``)
    killed: bool = False
    error: bool = False  # failed with an exception


@dataclass
class FakeRun:
    dag: FakeDag
    run_id: str
    conf: dict[str, Any]
    note: str | None
    created: float
    stopped_at: float | None = None
    state_override: str | None = None  # tests: what the API says, whatever the timeline
    api: str = "v2"

    def snapshot(self, now: float) -> tuple[str, list[TaskSnap]]:
        """The run's state and its task instances at ``now``, replayed from its timeline."""
        dag, interval = self.dag, self.dag.line_interval
        stop = self.stopped_at if self.stopped_at is not None and now >= self.stopped_at else None
        t = self.created + dag.queue_delay
        if dag.is_paused or now < t or (stop is not None and stop < t):
            waiting = "skipped" if stop is not None else None
            snaps = [TaskSnap(task.task_id, waiting, None, None, []) for task in dag.tasks]
            return self.state_override or ("failed" if stop is not None else "queued"), snaps
        snaps: list[TaskSnap] = []
        outcome: str | None = None  # None: every task so far succeeded
        decided = t  # when the tasks that never run were decided on
        for i, task in enumerate(dag.tasks):
            if outcome is not None:  # this task waits, or never runs
                state = {"running": None, "stopped": "skipped"}.get(outcome, "upstream_failed")
                at = decided if state and self.api == "v2" else None  # Airflow 3 dates them
                snaps.append(TaskSnap(task.task_id, state, at, at, []))
                continue
            if stop is not None and stop < t:
                at = stop if self.api == "v2" else None
                snaps.append(TaskSnap(task.task_id, "skipped", at, at, []))
                outcome = "stopped"
                continue
            head = [f"conf {k}={v}" for k, v in self.conf.items()] if i == 0 else []
            timed = [(t + k * interval, line) for k, line in enumerate([*head, *task.lines])]
            end = None if task.result == "hang" else t + len(timed) * interval
            if stop is not None and (end is None or stop < end):
                if self.api == "v1":
                    shown = [(at, line) for at, line in timed if at <= stop]
                    lines = [*shown, (stop, STOPPED_LINE)]
                    killed = True
                else:  # marked failed at once; the process logs on until it is killed
                    kill = stop + dag.kill_delay
                    shown = [(at, line) for at, line in timed if at <= min(now, kill)]
                    lines = sorted([*shown, (stop, STOPPED_LINE)])
                    killed = now >= kill
                    if killed:
                        lines.append((kill, KILLED_LINE))
                snaps.append(
                    TaskSnap(task.task_id, "failed", t, stop, lines, stopped=True, killed=killed)
                )
                outcome = "stopped"
                decided = stop
            elif end is None or now < end:
                shown = [(at, line) for at, line in timed if at <= now]
                snaps.append(TaskSnap(task.task_id, "running", t, None, shown))
                outcome = "running"
            else:
                failed = task.result == "failed"
                snaps.append(TaskSnap(task.task_id, task.result, t, end, timed, error=failed))
                outcome = "failed" if failed else None
                t = decided = end
        state = "success" if outcome is None else ("running" if outcome == "running" else "failed")
        return self.state_override or state, snaps


class FakeAirflow:
    def __init__(
        self,
        api: str = "v2",
        username: str = "ascob",
        password: str = "airflow-secret",
        bearer: str = "static-airflow-token",
        jwt_lifetime: float = 3600.0,
    ) -> None:
        assert api in ("v1", "v2")
        self.api = api
        self.users = {username: password}
        self.bearer = bearer
        self.jwt_lifetime = jwt_lifetime
        self.log_page_size = 1000
        self.dags: dict[str, FakeDag] = {}
        self.runs: dict[tuple[str, str], FakeRun] = {}
        self.created: list[tuple[str, str, dict[str, Any]]] = []
        self.requests: list[tuple[str, str]] = []
        self.logins = 0
        self.faults = FaultPlan()
        self._key = secrets.token_bytes(16)
        self._generation = 0  # a JWT of an older generation is expired
        self._lock = threading.RLock()
        app = Starlette(
            routes=[
                Route("/{path:path}", self._dispatch, methods=["GET", "POST", "PATCH", "DELETE"])
            ]
        )
        self.server = ServerThread(app)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> FakeAirflow:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def add_dag(self, dag_id: str, tasks: list[FakeTask] | None = None, **kwargs: Any) -> FakeDag:
        dag = FakeDag(dag_id, tasks or [FakeTask("main")], **kwargs)
        with self._lock:
            self.dags[dag_id] = dag
        return dag

    def run(self, dag_id: str, run_id: str) -> FakeRun:
        return self.runs[(dag_id, run_id)]

    def runs_of(self, dag_id: str) -> list[FakeRun]:
        return [r for (d, _), r in self.runs.items() if d == dag_id]

    def expire_tokens(self) -> None:
        """Every JWT issued so far is expired from now on."""
        self._generation += 1

    # ------------------------------------------------------------------ auth

    def _issue(self, user: str) -> str:
        now = time.time()
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"sub": user, "iat": now, "nbf": now, "exp": now + self.jwt_lifetime}
        claims["gen"] = self._generation
        body = _b64(json.dumps(claims).encode())
        sig = _b64(hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha256).digest())
        return f"{head}.{body}.{sig}"

    def _check_jwt(self, token: str) -> Response | None:
        try:
            head, body, sig = token.split(".")
            good = _b64(hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha256).digest())
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return self._error(403, "Invalid JWT token")
        if not hmac.compare_digest(sig, good):
            return self._error(403, "Invalid JWT token")
        if claims["exp"] < time.time() or claims.get("gen") != self._generation:
            return self._error(401, "Token Expired")
        return None

    def _auth_refusal(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value == self.bearer:
            return None
        if self.api == "v1":
            if scheme.lower() == "basic":
                try:
                    user, _, password = base64.b64decode(value).decode().partition(":")
                except ValueError:
                    user, password = "", ""
                if user in self.users and self.users[user] == password:
                    return None
            return self._error(401, None, "Unauthorized", "Unauthenticated")
        if scheme.lower() != "bearer" or not value:
            return self._error(401, "Not authenticated")
        return self._check_jwt(value)

    def _login(self, data: dict[str, Any]) -> Response:
        user, password = data.get("username"), data.get("password")
        if not user or not password:
            return self._error(400, "Username and password must be provided")
        if self.users.get(str(user)) != password:
            return self._error(401, "Invalid credentials")
        self.logins += 1
        return JSONResponse({"access_token": self._issue(str(user))}, status_code=201)

    # ------------------------------------------------------------------ plumbing

    def _error(
        self, status: int, detail: Any, title: str | None = None, kind: str | None = None
    ) -> Response:
        if self.api == "v1":
            body = {
                "detail": detail,
                "status": status,
                "title": title
                or {400: "Bad Request", 404: "Not Found", 409: "Conflict"}.get(status, "Error"),
                "type": "https://airflow.apache.org/docs/apache-airflow/2.10.5/"
                f"stable-rest-api-ref.html#section/Errors/{kind or 'Error'}",
            }
            return JSONResponse(body, status_code=status, media_type="application/problem+json")
        return JSONResponse({"detail": detail}, status_code=status)

    async def _dispatch(self, request: Request) -> Response:
        return await apply_faults(self.faults, request, self._handle)

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        self.requests.append((request.method, path))
        if path == "/auth/token" and request.method == "POST" and self.api == "v2":
            return self._login(await self._body(request) or {})
        prefix = f"/api/{self.api}/"
        if self.api == "v2" and path.startswith("/api/v1/"):
            return JSONResponse({"error": V1_REMOVED}, status_code=404)
        if self.api == "v2" and path == "/api/v2/version":
            return JSONResponse({"version": "3.3.2", "git_version": None})
        if not path.startswith(prefix):
            return self._error(404, "Not Found")
        refusal = self._auth_refusal(request)
        if refusal is not None:
            return refusal
        parts = path[len(prefix) :].strip("/").split("/")
        with self._lock:
            return await self._route(request, parts, time.time())

    async def _body(self, request: Request) -> dict[str, Any] | None:
        try:
            data = json.loads(await request.body() or b"null")
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def _route(self, request: Request, parts: list[str], now: float) -> Response:
        method = request.method
        if len(parts) < 2 or parts[0] != "dags":
            return self._error(404, "Not Found")
        dag = self.dags.get(parts[1])
        if dag is None:
            if self.api == "v1":
                return self._error(
                    404,
                    f"The DAG with dag_id: `{parts[1]}` was not found",
                    "DAG not found",
                    "NotFound",
                )
            return self._error(404, f"Dag with id {parts[1]} was not found")
        if len(parts) == 2 and method == "GET":
            return JSONResponse(self._dag_json(dag))
        if len(parts) < 3 or parts[2] != "dagRuns":
            return self._error(404, "Not Found")
        if len(parts) == 3 and method == "POST":
            return await self._trigger(request, dag, now)
        if len(parts) == 3 and method == "GET":
            wanted_states = request.query_params.getlist("state")
            runs = [self._run_json(r, now) for r in self.runs_of(dag.dag_id) if r is not None]
            runs = [r for r in runs if not wanted_states or r["state"] in wanted_states]
            limit = int(request.query_params.get("limit", "100"))
            return JSONResponse({"dag_runs": runs[:limit], "total_entries": len(runs)})
        wanted = parts[3] if len(parts) > 3 else ""
        run = self.runs.get((dag.dag_id, wanted))
        if run is None:
            if self.api == "v1":
                detail = f"DAGRun with DAG ID: '{dag.dag_id}' and DagRun ID: '{wanted}' not found"
                return self._error(404, detail, "DAGRun not found", "NotFound")
            return self._error(
                404, f"The DagRun with dag_id: `{dag.dag_id}` and run_id: `{wanted}` was not found"
            )
        rest = parts[4:]
        if not rest and method == "GET":
            return JSONResponse(self._run_json(run, now))
        if not rest and method == "PATCH":
            return await self._patch(
                request, run, now, allowed={"state", "note"} if self.api == "v2" else {"state"}
            )
        if rest == ["setNote"] and method == "PATCH" and self.api == "v1":
            return await self._patch(request, run, now, allowed={"note"})
        if rest == ["taskInstances"] and method == "GET":
            return self._task_instances(request, run, now)
        if len(rest) == 4 and rest[0] == "taskInstances" and rest[2] == "logs":
            return self._log(request, run, rest[1], rest[3], now)
        return self._error(404, "Not Found")

    # ------------------------------------------------------------------ resources

    def _dag_json(self, dag: FakeDag) -> dict[str, Any]:
        data: dict[str, Any] = {
            "dag_id": dag.dag_id,
            "dag_display_name": dag.dag_id,
            "is_paused": dag.is_paused,
            "fileloc": f"/opt/airflow/dags/{dag.dag_id}.py",
            "owners": ["airflow"],
            "tags": [],
            "max_active_runs": dag.max_active_runs,
        }
        if self.api == "v1":
            data["is_active"] = True
        else:
            data["is_stale"] = False
        return data

    def _run_json(self, run: FakeRun, now: float) -> dict[str, Any]:
        state, snaps = run.snapshot(now)
        starts = [s.start for s in snaps if s.start is not None]
        ends = [s.end for s in snaps if s.end is not None]
        final = state in ("success", "failed")
        data: dict[str, Any] = {
            "dag_run_id": run.run_id,
            "dag_id": run.dag.dag_id,
            "logical_date": None if self.api == "v2" else _iso(run.created),
            "queued_at": _iso(run.created),
            "start_date": _iso(min(starts)) if starts else None,
            "end_date": _iso(max([*ends, run.stopped_at or 0])) if final else None,
            "data_interval_start": None,
            "data_interval_end": None,
            "run_type": "manual",
            "state": state,
            "conf": run.conf,
            "note": run.note,
        }
        if self.api == "v1":
            data["external_trigger"] = True
            data["execution_date"] = data["logical_date"]
        else:
            data["triggered_by"] = "rest_api"
            data["run_after"] = _iso(run.created)
        return data

    async def _trigger(self, request: Request, dag: FakeDag, now: float) -> Response:
        body = await self._body(request)
        if body is None:
            return self._error(400, "Invalid JSON body")
        known = {
            "dag_run_id",
            "conf",
            "note",
            "logical_date",
            "data_interval_start",
            "data_interval_end",
        }
        if self.api == "v2":
            known |= {"run_after"}
            if "logical_date" not in body:
                return self._error(
                    422,
                    [{"type": "missing", "loc": ["body", "logical_date"], "msg": "Field required"}],
                )
            extra = sorted(set(body) - known)
            if extra:
                return self._error(
                    422,
                    [
                        {
                            "type": "extra_forbidden",
                            "loc": ["body", k],
                            "msg": "Extra inputs are not permitted",
                        }
                        for k in extra
                    ],
                )
        else:
            known |= {"execution_date"}
            extra = sorted(set(body) - known)
            if extra:
                return self._error(
                    400, f"{{'{extra[0]}': ['Unknown field.']}}", "Bad Request", "BadRequest"
                )
        conf = body.get("conf") or {}
        if not isinstance(conf, dict):
            return self._error(400, "conf must be an object")
        run_id = str(body.get("dag_run_id") or f"manual__{_iso(now)}")
        if (dag.dag_id, run_id) in self.runs:
            if self.api == "v1":
                return self._error(
                    409,
                    f"DAGRun with DAG ID: '{dag.dag_id}' and DAGRun ID: '{run_id}' already exists",
                    "Conflict",
                    "AlreadyExists",
                )
            return self._error(
                409,
                {
                    "reason": "Unique constraint violation",
                    "statement": "hidden",
                    "orig_error": "hidden",
                    "message": "Serious error when handling your request. Check logs for more "
                    "details - you will find it in api server when you look for ID abc123",
                },
            )
        run = FakeRun(dag, run_id, dict(conf), body.get("note"), now, api=self.api)
        self.runs[(dag.dag_id, run_id)] = run
        self.created.append((dag.dag_id, run_id, dict(conf)))
        return JSONResponse(self._run_json(run, now))

    async def _patch(
        self, request: Request, run: FakeRun, now: float, allowed: set[str]
    ) -> Response:
        body = await self._body(request)
        if body is None or set(body) - allowed:
            field_names = sorted(set(body or {}) - allowed) or ["body"]
            if self.api == "v1":
                return self._error(
                    400, f"{{'{field_names[0]}': ['Unknown field.']}}", "Bad Request", "BadRequest"
                )
            return self._error(
                422,
                [
                    {
                        "type": "extra_forbidden",
                        "loc": ["body", f],
                        "msg": "Extra inputs are not permitted",
                    }
                    for f in field_names
                ],
            )
        if "state" in body:
            if body["state"] not in ("failed", "success", "queued"):
                return self._error(
                    400 if self.api == "v1" else 422, f"invalid state {body['state']!r}"
                )
            if body["state"] == "failed":
                state, _ = run.snapshot(now)
                if state not in ("success", "failed") and run.stopped_at is None:
                    run.stopped_at = now
        if "note" in body:
            run.note = body["note"]
        return JSONResponse(self._run_json(run, now))

    def _task_instances(self, request: Request, run: FakeRun, now: float) -> Response:
        _, snaps = run.snapshot(now)
        limit = int(request.query_params.get("limit", "100"))
        offset = int(request.query_params.get("offset", "0"))
        items = [
            {
                "task_id": s.task_id,
                "dag_id": run.dag.dag_id,
                "dag_run_id": run.run_id,
                "map_index": -1,
                "try_number": 1 if s.start is not None and s.state not in _NEVER_RAN else 0,
                "state": s.state,
                "pid": 4242 if s.start is not None and s.state not in _NEVER_RAN else None,
                "hostname": "worker" if s.start is not None else "",
                "start_date": _iso(s.start),
                "end_date": _iso(s.end),
                "operator": "BashOperator",
            }
            for s in snaps
        ]
        return JSONResponse(
            {"task_instances": items[offset : offset + limit], "total_entries": len(items)}
        )

    def _entries(self, snap: TaskSnap, path: str, finished: bool) -> list[dict[str, Any]]:
        """An Airflow 3.3.2 log: where the server read it (while the task runs it also tries
        the worker's log server), Airflow's Pre/Post Execute groups around the task's lines, the
        exception of a failed task (``error_detail``), and after a stop the process's last lines
        until it is killed."""
        sources: list[dict[str, Any]] = [
            {"event": "::group::Log message source details"},
            {"event": path},
        ]
        if not finished:
            sources.append(
                {
                    "event": "Could not read served logs: HTTPConnectionPool(host='worker', "
                    "port=8793): Max retries exceeded with url: /log/" + path.split("/logs/")[-1]
                }
            )
        sources.append({"event": "::endgroup::"})

        def entry(at: float | None, event: str, level: str = "info", **more: Any) -> dict[str, Any]:
            return {"timestamp": _iso(at), "event": event, "level": level, **more}

        body = [entry(snap.start, "::group::Pre Execute", logger="task")]
        body.append(entry(snap.start, "::endgroup::", logger="task"))
        for at, line in snap.lines:
            if line == KILLED_LINE:
                body.append(entry(at, line, "error", logger="task"))
            else:
                body.append(entry(at, line, logger="task.stdout"))
        if finished and not snap.stopped:
            if snap.error:
                frames = [
                    {"filename": "/opt/airflow/sdk/task_runner.py", "lineno": 1579, "name": "run"},
                    {"filename": "/opt/airflow/bash.py", "lineno": 233, "name": "execute"},
                ]
                detail = [
                    {
                        "exc_type": "AirflowException",
                        "exc_value": EXCEPTION,
                        "exc_notes": [],
                        "syntax_error": None,
                        "is_cause": False,
                        "frames": frames,
                        "is_group": False,
                        "exceptions": [],
                    }
                ]
                body.append(
                    entry(snap.end, "Task failed with exception", "error", error_detail=detail)
                )
            body.append(entry(snap.end, "::group::Post Execute", logger="task"))
            body.append(entry(snap.end, "::endgroup::", logger="task"))
        return [*sources, *body]

    def _log(
        self, request: Request, run: FakeRun, task_id: str, attempt: str, now: float
    ) -> Response:
        _, snaps = run.snapshot(now)
        snap = next((s for s in snaps if s.task_id == task_id), None)
        map_index = int(request.query_params.get("map_index", "-1"))
        never_ran = snap is not None and snap.state in _NEVER_RAN
        if self.api == "v2" and never_ran and attempt == "0" and map_index == -1:
            note = (
                "Task was skipped \u2014 no logs available."
                if snap is not None and snap.state == "skipped"
                else "Task did not run because upstream task(s) failed."
            )
            return JSONResponse(
                {
                    "content": [
                        {"timestamp": None, "event": "::group::Log message source details"},
                        {"timestamp": None, "event": "::endgroup::"},
                        {"timestamp": _iso(snap.start if snap else None), "event": note},
                    ],
                    "continuation_token": None,
                }
            )
        if snap is None or snap.start is None or never_ran or attempt != "1" or map_index != -1:
            if self.api == "v1":
                return self._error(404, None, "TaskInstance not found", "NotFound")
            return self._error(404, "TaskInstance not found")
        path = (
            f"/opt/airflow/logs/dag_id={run.dag.dag_id}/run_id={run.run_id}/"
            f"task_id={task_id}/attempt=1.log"
        )
        finished = snap.state in ("success", "failed", "skipped", "upstream_failed")
        if self.api == "v1":
            text = f"*** Found local files:\n***   * {path}\n" + "".join(
                f"[{_iso(at)}] {{subprocess.py:93}} INFO - {line}\n" for at, line in snap.lines
            )
            if "text/plain" in request.headers.get("accept", ""):
                return PlainTextResponse(text)
            return JSONResponse({"content": text, "continuation_token": "opaque"})
        entries = self._entries(snap, path, finished)
        start = 0
        token = request.query_params.get("token")
        if token:
            try:
                start = int(json.loads(base64.urlsafe_b64decode(token))["log_pos"])
            except (ValueError, KeyError):
                return self._error(
                    400, "Bad Signature. Please use only the tokens provided by the API."
                )
        page = entries[start : start + self.log_page_size]
        end = start + len(page)
        done = finished and end >= len(entries)
        next_token = (
            None
            if done
            else base64.urlsafe_b64encode(json.dumps({"log_pos": end}).encode()).decode()
        )
        return JSONResponse({"content": page, "continuation_token": next_token})
