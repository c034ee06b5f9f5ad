"""A Kubernetes API server that models batch/v1 Jobs, their pods and the pods' logs over time,
following the API reference for the calls ASCOB makes.

- Bearer-token authentication: no or a wrong token answers 401 ``Unauthorized``; a token in
  ``forbidden_tokens`` answers 403 ``Forbidden``. Errors are ``Status`` objects
  (``{"kind": "Status", "status": "Failure", "reason", "message", "code"}``).
- ``POST /apis/batch/v1/namespaces/{ns}/jobs`` (201; 409 ``AlreadyExists`` for a taken name; 422
  ``Invalid`` for a name that is not DNS-1123 of at most 63 characters or an env var name with
  ``=``; 404 for an unknown namespace); ``GET``, ``PATCH`` (``application/merge-patch+json`` only,
  else 415) and ``DELETE`` (``propagationPolicy`` ``Foreground``: the Job stays with a
  ``deletionTimestamp`` until its pods are gone; ``Background``: gone at once, pods later; none:
  batch/v1's default, the pods are orphaned and keep running) of ``.../jobs/{name}``.
- ``GET /api/v1/namespaces/{ns}/pods?labelSelector=job-name=…`` and
  ``GET .../pods/{pod}/log?container=&timestamps=&sinceTime=`` (plain text; RFC 3339 nano
  timestamps with trailing zeros trimmed, as Go writes them; ``sinceTime`` is kept to the
  second, so lines of that second come again; 400 while the container is waiting).
- What a container does is the :class:`Script` of its image: it prints its environment
  (``NAME=value``, ASCOB's own variables excepted) then its lines, one every ``line_interval``
  s, and exits with the attempt's exit code (``hang``: never exits). A pod is created
  ``start_delay`` s after the Job, ``Pending`` for ``pending`` s; a failed pod is retried after
  ``retry_delay`` s until more than ``backoffLimit`` pods failed (condition ``Failed``,
  ``BackoffLimitExceeded``); ``activeDeadlineSeconds`` fails the Job with ``DeadlineExceeded``.
- ``spec.suspend: true`` deletes the active pod (``terminating`` for ``terminate_delay`` s, then
  gone) and sets the condition ``Suspended``. Resuming is not modelled.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.fakes.server import FaultPlan, ServerThread, apply_faults

DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_nano(t: float) -> str:
    """Go's RFC3339Nano: nanoseconds with trailing zeros trimmed."""
    ns = round(t * 1e9)
    head = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{ns % 1_000_000_000:09d}".rstrip("0")
    return f"{head}.{fraction}Z" if fraction else f"{head}Z"


@dataclass
class Script:
    lines: list[str] = field(default_factory=lambda: ["step 1", "step 2"])
    exit_codes: list[int] = field(default_factory=lambda: [0])  # per attempt; the last repeats
    line_interval: float = 0.05
    start_delay: float = 0.0
    pending: float = 0.0
    retry_delay: float = 1.0
    hang: bool = False


@dataclass
class Pod:
    name: str
    uid: str
    created: float
    attempt: int
    env: dict[str, str]
    script: Script
    killed: float | None = None  # deleted or killed at (its container stops then)
    gone: float | None = None  # removed from the API at

    @property
    def started(self) -> float:
        return self.created + self.script.pending

    def lines(self) -> list[str]:
        shown = {k: v for k, v in self.env.items() if not k.startswith("ASCOB_")}
        return [f"{k}={v}" for k, v in shown.items()] + self.script.lines

    def natural_end(self) -> float | None:
        if self.script.hang:
            return None
        return self.started + len(self.lines()) * self.script.line_interval

    def end(self) -> float | None:
        ends = [t for t in (self.natural_end(), self.killed) if t is not None]
        return min(ends) if ends else None

    def exit_code(self) -> int:
        natural = self.natural_end()
        if self.killed is not None and (natural is None or self.killed < natural):
            return 137
        codes = self.script.exit_codes
        return codes[min(self.attempt, len(codes) - 1)]

    def phase(self, now: float) -> str:
        if now < self.started:
            return "Pending"
        end = self.end()
        if end is None or now < end:
            return "Running"
        return "Succeeded" if self.exit_code() == 0 else "Failed"

    def log(self, now: float) -> list[tuple[float, str]]:
        end = self.end()
        out = []
        for i, line in enumerate(self.lines()):
            t = self.started + i * self.script.line_interval
            if t > now or (end is not None and t >= end):
                break
            out.append((t, line))
        return out


@dataclass
class FakeJob:
    body: dict[str, Any]
    uid: str
    created: float
    script: Script
    pods: list[Pod] = field(default_factory=list)
    condition: tuple[str, str, str, float] | None = None  # type, reason, message, at
    suspended_at: float | None = None
    deleted_at: float | None = None
    policy: str | None = None

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.body["spec"])


class FakeKubernetes:
    def __init__(self, token: str = "k8s-secret", namespaces: tuple[str, ...] = ("ascob",)) -> None:
        self.token = token
        self.forbidden_tokens: set[str] = set()
        self.namespaces = set(namespaces)
        self.scripts: dict[str, Script] = {}
        self.jobs: dict[tuple[str, str], FakeJob] = {}
        self.created: list[FakeJob] = []  # every Job created (201), in order
        self.orphans: list[Pod] = []  # pods left running by a delete without propagation
        self.requests: list[tuple[str, str, str]] = []  # method, path, query
        self.terminate_delay = 0.3
        self.faults = FaultPlan()
        self._lock = threading.RLock()
        methods = ["GET", "POST", "PATCH", "DELETE"]
        app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=methods)])
        self.server = ServerThread(app)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> FakeKubernetes:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def add_image(self, image: str, **kwargs: Any) -> Script:
        self.scripts[image] = Script(**kwargs)
        return self.scripts[image]

    def job(self, name: str, namespace: str = "ascob") -> FakeJob:
        return next(
            j
            for j in self.created
            if j.name == name and j.body["metadata"]["namespace"] == namespace
        )

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def status(code: int, reason: str, message: str, **details: Any) -> JSONResponse:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        if details:
            body["details"] = details
        return JSONResponse(body, status_code=code)

    async def _dispatch(self, request: Request) -> Response:
        return await apply_faults(self.faults, request, self._handle)

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        self.requests.append((request.method, path, request.url.query))
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if token in self.forbidden_tokens:
            return self.status(
                403,
                "Forbidden",
                f'{path} is forbidden: User "system:serviceaccount:ascob:{token}" cannot '
                f"{request.method.lower()} this resource",
            )
        if token != self.token:
            return self.status(401, "Unauthorized", "Unauthorized")
        raw = await request.body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return self.status(400, "BadRequest", "the body is not JSON")
        with self._lock:
            now = time.time()
            for job in list(self.jobs.values()):
                self._advance(job, now)
            self._reap(now)
            return self._route(request, path, body, now)

    # ------------------------------------------------------------------ the simulation

    def _new_pod(self, job: FakeJob, at: float) -> Pod:
        container = job.spec["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value", "") for e in container.get("env") or []}
        suffix = uuid.uuid4().hex[:5]
        pod = Pod(f"{job.name}-{suffix}", str(uuid.uuid4()), at, len(job.pods), env, job.script)
        job.pods.append(pod)
        return pod

    def _advance(self, job: FakeJob, now: float) -> None:
        """Bring the Job up to ``now``: pods started, ended, retried; conditions set."""
        spec = job.spec
        if job.deleted_at is not None or job.suspended_at is not None:
            return
        deadline = spec.get("activeDeadlineSeconds")
        backoff = int(spec.get("backoffLimit", 6))
        while job.condition is None:
            if not job.pods:
                at = job.created + job.script.start_delay
                if at > now:
                    return
                self._new_pod(job, at)
                continue
            pod = job.pods[-1]
            limit = job.created + deadline if deadline is not None else None
            end = pod.end()
            if limit is not None and limit <= now and (end is None or limit < end):
                pod.killed = limit
                job.condition = (
                    "Failed",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    limit,
                )
                return
            if end is None or end > now:
                return
            if pod.exit_code() == 0:
                job.condition = ("Complete", "", "", end)
                return
            failed = sum(1 for p in job.pods if p.exit_code() != 0)
            if failed > backoff:
                job.condition = (
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    end,
                )
                return
            at = end + job.script.retry_delay
            if at > now:
                return
            self._new_pod(job, at)

    def _live_pods(self, job: FakeJob, now: float) -> list[Pod]:
        return [p for p in job.pods if p.created <= now and (p.gone is None or p.gone > now)]

    def _kill(self, job: FakeJob, now: float, every_pod: bool) -> None:
        """Delete the Job's running pods (``every_pod``: the ended ones too)."""
        for pod in job.pods:
            end = pod.end()
            running = end is None or end > now
            if running:
                pod.killed = now
            if (running or every_pod) and pod.gone is None:
                pod.gone = now + self.terminate_delay

    # ------------------------------------------------------------------ JSON

    def _pod_json(self, job: FakeJob, pod: Pod, now: float) -> dict[str, Any]:
        ns = job.body["metadata"]["namespace"]
        labels = {
            "job-name": job.name,
            "batch.kubernetes.io/job-name": job.name,
            "controller-uid": job.uid,
            "batch.kubernetes.io/controller-uid": job.uid,
        }
        meta: dict[str, Any] = {
            "name": pod.name,
            "namespace": ns,
            "uid": pod.uid,
            "creationTimestamp": rfc3339(pod.created),
            "labels": labels,
        }
        if pod.gone is not None:
            meta["deletionTimestamp"] = rfc3339(pod.gone - self.terminate_delay)
        status: dict[str, Any] = {"phase": pod.phase(now), "startTime": rfc3339(pod.created)}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}

    def _job_json(self, job: FakeJob, now: float) -> dict[str, Any]:
        data = json.loads(json.dumps(job.body))
        meta = data["metadata"]
        meta.update(uid=job.uid, creationTimestamp=rfc3339(job.created), resourceVersion="1")
        if job.deleted_at is not None and job.policy == "Foreground":
            meta["deletionTimestamp"] = rfc3339(job.deleted_at)
            meta["finalizers"] = ["foregroundDeletion"]
        status: dict[str, Any] = {}
        live = self._live_pods(job, now)
        active = [p for p in live if p.gone is None and p.phase(now) in ("Pending", "Running")]
        terminating = [p for p in live if p.gone is not None and p.phase(now) == "Running"]
        if job.pods:
            status["startTime"] = rfc3339(job.pods[0].created)
        counts = {
            "active": len(active),
            "terminating": len(terminating),
            "succeeded": sum(1 for p in job.pods if p.phase(now) == "Succeeded"),
            "failed": sum(1 for p in job.pods if p.phase(now) == "Failed" and p.gone is None),
        }
        status.update({k: v for k, v in counts.items() if v})
        conditions = []
        if job.suspended_at is not None:
            conditions.append(
                {
                    "type": "Suspended",
                    "status": "True",
                    "reason": "JobSuspended",
                    "message": "Job suspended",
                    "lastTransitionTime": rfc3339(job.suspended_at),
                }
            )
        if job.condition is not None:
            kind, reason, message, at = job.condition
            entry = {"type": kind, "status": "True", "lastTransitionTime": rfc3339(at)}
            if reason:
                entry.update(reason=reason, message=message)
            conditions.append(entry)
            if kind == "Complete":
                status["completionTime"] = rfc3339(at)
        if conditions:
            status["conditions"] = conditions
        data["status"] = status
        return data

    # ------------------------------------------------------------------ routes

    def _route(self, request: Request, path: str, body: Any, now: float) -> Response:
        m = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?", path)
        if m:
            ns, name = m.group(1), m.group(2)
            if ns not in self.namespaces:
                return self.status(
                    404, "NotFound", f'namespaces "{ns}" not found', name=ns, kind="namespaces"
                )
            if name is None:
                if request.method != "POST":
                    return Response(status_code=405)
                return self._create(ns, body, now)
            job = self.jobs.get((ns, name))
            if job is None:
                return self.status(
                    404,
                    "NotFound",
                    f'jobs.batch "{name}" not found',
                    name=name,
                    group="batch",
                    kind="jobs",
                )
            if request.method == "GET":
                return JSONResponse(self._job_json(job, now))
            if request.method == "PATCH":
                return self._patch(request, job, body, now)
            if request.method == "DELETE":
                return self._delete(request, job, body, now)
            return Response(status_code=405)
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)/log)?", path)
        if m and request.method == "GET":
            ns, pod_name = m.group(1), m.group(2)
            if pod_name is None:
                return self._list_pods(request, ns, now)
            return self._log(request, ns, pod_name, now)
        return self.status(404, "NotFound", "the server could not find the requested resource")

    def _create(self, ns: str, body: Any, now: float) -> Response:
        if not isinstance(body, dict) or body.get("kind") != "Job":
            return self.status(400, "BadRequest", "expected a batch/v1 Job")
        name = str((body.get("metadata") or {}).get("name") or "")
        problems = []
        if not DNS1123.match(name) or len(name) > 63:
            problems.append(
                f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 '
                "subdomain of at most 63 characters"
            )
        containers = body["spec"]["template"]["spec"]["containers"]
        for i, e in enumerate(containers[0].get("env") or []):
            if not e.get("name") or "=" in e["name"]:
                problems.append(f"spec.template.spec.containers[0].env[{i}].name: Invalid value")
        if problems:
            return self.status(
                422, "Invalid", f'Job.batch "{name}" is invalid: ' + "; ".join(problems)
            )
        if (ns, name) in self.jobs:
            return self.status(
                409,
                "AlreadyExists",
                f'jobs.batch "{name}" already exists',
                name=name,
                group="batch",
                kind="jobs",
            )
        body["metadata"]["namespace"] = ns
        body["spec"].setdefault("backoffLimit", 6)
        body["spec"].setdefault("suspend", False)
        image = containers[0].get("image")
        script = self.scripts.get(image, Script())
        job = FakeJob(body, str(uuid.uuid4()), now, script)
        if body["spec"]["suspend"]:
            job.suspended_at = now
        self.jobs[(ns, name)] = job
        self.created.append(job)
        return JSONResponse(self._job_json(job, now), status_code=201)

    def _patch(self, request: Request, job: FakeJob, body: Any, now: float) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype != "application/merge-patch+json":
            return self.status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted "
                f"media types include: application/merge-patch+json (not {ctype})",
            )
        merged = _merge(job.body, body)
        if merged["spec"].get("suspend") is True and job.suspended_at is None:
            if job.condition is None:
                job.suspended_at = now
                self._kill(job, now, every_pod=False)
        job.body = merged
        return JSONResponse(self._job_json(job, now))

    def _delete(self, request: Request, job: FakeJob, body: Any, now: float) -> Response:
        policy = request.query_params.get("propagationPolicy")
        if policy is None and isinstance(body, dict):
            policy = body.get("propagationPolicy")
        job.policy = policy
        job.deleted_at = now
        key = (job.body["metadata"]["namespace"], job.name)
        if policy in ("Foreground", "Background"):
            self._kill(job, now, every_pod=True)
        else:  # batch/v1's default: orphan the pods (they keep running)
            self.orphans += [p for p in job.pods if p.gone is None]
        if policy == "Foreground":
            return JSONResponse(self._job_json(job, now))
        del self.jobs[key]
        return JSONResponse(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": job.name, "kind": "jobs"},
            }
        )

    def _selected(self, selector: str) -> list[FakeJob]:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        found = []
        for job in self.jobs.values():
            labels = {
                "job-name": job.name,
                "batch.kubernetes.io/job-name": job.name,
                "controller-uid": job.uid,
                "batch.kubernetes.io/controller-uid": job.uid,
            }
            if all(labels.get(k) == v for k, v in wanted.items()):
                found.append(job)
        return found

    def _list_pods(self, request: Request, ns: str, now: float) -> Response:
        selector = request.query_params.get("labelSelector", "")
        items = [
            self._pod_json(job, pod, now)
            for job in self._selected(selector)
            if job.body["metadata"]["namespace"] == ns
            for pod in self._live_pods(job, now)
        ]
        return JSONResponse(
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "1"},
                "items": items,
            }
        )

    def _reap(self, now: float) -> None:
        """Remove Jobs whose foreground deletion has finished (all their pods gone)."""
        for key, job in list(self.jobs.items()):
            if job.deleted_at is not None and not self._live_pods(job, now):
                del self.jobs[key]

    def _log(self, request: Request, ns: str, pod_name: str, now: float) -> Response:
        found = [
            (j, p)
            for j in self.jobs.values()
            for p in self._live_pods(j, now)
            if p.name == pod_name and j.body["metadata"]["namespace"] == ns
        ]
        if not found:
            return self.status(
                404, "NotFound", f'pods "{pod_name}" not found', name=pod_name, kind="pods"
            )
        _, pod = found[0]
        container = request.query_params.get("container", "job")
        if container != "job":
            return self.status(
                400, "BadRequest", f"container {container} is not valid for pod {pod_name}"
            )
        if pod.phase(now) == "Pending":
            return self.status(
                400,
                "BadRequest",
                f'container "job" in pod "{pod_name}" is waiting to start: ContainerCreating',
            )
        since_raw = request.query_params.get("sinceTime")
        since = None
        if since_raw:
            since = int(datetime.fromisoformat(since_raw.replace("Z", "+00:00")).timestamp())
        stamps = request.query_params.get("timestamps") == "true"
        out = []
        for t, line in pod.log(now):
            if since is not None and t < since:
                continue
            out.append(f"{rfc3339_nano(t)} {line}\n" if stamps else f"{line}\n")
        return PlainTextResponse("".join(out))


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result
