"""What the portals do during the soak: submit runs and act on them, as a portal would.

Each :class:`Item` is drawn from the seeded generator (same seed, same items): a backend (dummy,
Jenkins or Rundeck) and a job kind, 0-2 lock keys out of a small key space, a duration, and what
else happens to it: a manual start after an uploaded file (which the job then reads through its
webhook), a stop through the API or through Prefect (Cancel on the flow run), a webhook report
from the job, a resubmit once it ended. Items are submitted through the APIs in turn.

The driver behaves like a careful portal: a submission whose answer is lost (an API killed, a
refused connection, a 5xx) is sent again with the same ``Idempotency-Key`` to the other API until
one answers; other calls are retried the same way, and answers that say the call no longer
applies (a stop of an ended run: 400) are accepted. What the driver saw is recorded in
:class:`Tracked` for the checker; what the checker believes comes from the backends.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.soak.stack import JOB_KINDS, Stack
from tests.harness import WEBHOOK_TOKEN

FINAL = {"SUCCEDED", "FAILED", "ABORTED", "IN_DOUBT"}
BACKENDS = ("dummy", "jenkins", "rundeck")
RETRY_FOR = 900.0  # seconds a call is retried before the driver gives up on it (a fault lasts less)


@dataclass
class Item:
    n: int
    backend: str
    kind: str  # a key of JOB_KINDS (dummy: its duration and status follow the kind)
    keys: list[str]
    manual: bool = False
    stop_after: float | None = None
    stop_via: str = "api"  # or "prefect"
    webhook: bool = False
    resubmit: bool = False
    probe: bool = False  # a fault's recovery probe: no lock, dummy, nothing else


@dataclass
class Tracked:
    """What the driver knows of one run it created (a resubmit creates a second one)."""

    item: Item
    run_id: int
    submitted_at: float
    parent: int | None = None
    notes: list[str] = field(default_factory=list)


def draw(rng: random.Random, n: int, key_space: int) -> Item:
    backend = rng.choices(BACKENDS, weights=(5, 3, 2))[0]
    kind = rng.choices(list(JOB_KINDS), weights=(6, 3, 1))[0]
    count = rng.choices((0, 1, 2), weights=(3, 5, 2))[0]
    keys = sorted(rng.sample([f"soak-k{k}" for k in range(key_space)], count))
    item = Item(n, backend, kind, keys)
    roll = rng.random()
    if roll < 0.06:
        item.manual = True
    elif roll < 0.14:
        item.stop_after = rng.uniform(0.0, 4.0)
        item.stop_via = "prefect" if rng.random() < 0.35 else "api"
    elif roll < 0.24:
        item.webhook = True
    elif roll < 0.28:
        item.resubmit = True
    return item


def spec(item: Item, seed: int) -> dict[str, Any]:
    lines, interval, end = JOB_KINDS[item.kind]
    labels: dict[str, str]
    if item.backend == "dummy":
        labels = {
            "_execution_backend_id": "dummyBackend",
            "duration": f"{lines * interval:.2f}",
            "status": "SUCCEEDED" if end == "ok" else "FAILED",
        }
    elif item.backend == "jenkins":
        labels = {"jenkins_instance": "ci", "jenkins_project_name": f"soak/{item.kind}"}
    else:
        labels = {"rundeck_project_name": "soak", "rundeck_job_name": item.kind}
    return {
        "description": f"soak {seed} item {item.n}" + (" probe" if item.probe else ""),
        "submitter": f"user{item.n % 5}",
        "labels": labels,
        "parameters": {"RUN": "%%RUNID%%", "FENCE": "%%LOCKTOKEN%%", "HOOK": "%%WEBHOOKID%%"},
        "runtimeVariables": True,
        "locks": [{"key": k} for k in item.keys],
        "manualStart": item.manual,
    }


class Driver:
    """Runs items on threads; everything it learns goes to ``tracked`` (under ``lock``)."""

    def __init__(self, stack: Stack, seed: int) -> None:
        self.stack, self.seed = stack, seed
        self.tracked: dict[int, Tracked] = {}
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.calls_retried = 0
        self._clients = [stack.api_client(i) for i in range(len(stack.apis))]

    # ------------------------------------------------------------------ plumbing

    def call(
        self,
        method: str,
        path: str,
        first: int,
        ok: Callable[[httpx.Response], bool] = lambda r: r.status_code < 300,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send to API ``first``, then to the others in turn, until an answer ``ok`` accepts;
        connection errors, timeouts, 5xx and 401-from-a-restarting-API are retried."""
        deadline = time.monotonic() + RETRY_FOR
        attempt = 0
        while True:
            client = self._clients[(first + attempt) % len(self._clients)]
            try:
                r = client.request(method, path, **kwargs)
                if ok(r):
                    return r
                if r.status_code < 500:
                    raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
            except httpx.HTTPError:
                pass
            attempt += 1
            with self.lock:
                self.calls_retried += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method} {path}: no answer for {RETRY_FOR:.0f} s")
            time.sleep(min(0.2 * attempt, 2.0))

    def status(self, run_id: int, api: int) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/runs/{run_id}", api).json())

    def wait_for(self, run_id: int, api: int, statuses: set[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            status = str(self.status(run_id, api)["status"])
            if status in statuses or time.monotonic() > deadline:
                return status
            time.sleep(0.5)

    def _track(self, item: Item, run_id: int, parent: int | None = None) -> Tracked:
        t = Tracked(item, run_id, time.time(), parent)
        with self.lock:
            self.tracked[run_id] = t
        return t

    # ------------------------------------------------------------------ one item

    def submit(self, item: Item) -> Tracked:
        api = item.n % len(self._clients)
        r = self.call(
            "POST",
            "/api/runs",
            api,
            json={"jobSpec": spec(item, self.seed)},
            headers={"Idempotency-Key": f"soak-{self.seed}-{item.n}"},
        )
        return self._track(item, int(r.json()["runId"]))

    def play(self, item: Item) -> None:
        try:
            self._play(item)
        except Exception as exc:
            with self.lock:
                self.errors.append(f"item {item.n}: {exc!r}")

    def _play(self, item: Item) -> None:
        t = self.submit(item)
        api, run_id = item.n % len(self._clients), t.run_id
        if item.manual:
            content = f"input of soak item {item.n}".encode()
            self.call(
                "POST",
                f"/api/runs/{run_id}/files/input.txt",
                api,
                content=content,
                headers={"content-type": "application/octet-stream"},
            )
            time.sleep(random.uniform(0.2, 1.5))
            # a start whose answer was lost answers 400 the second time: the run already left
            # DEFINED, which is what the start asked for
            self.call(
                "POST", f"/api/runs/{run_id}/start", api, ok=lambda r: r.status_code in (200, 400)
            )
            self._read_input(run_id, api, content, t)
        if item.stop_after is not None:
            time.sleep(item.stop_after)
            if item.stop_via == "prefect":
                self._cancel_in_prefect(run_id, t)
            else:
                self.call(
                    "DELETE", f"/api/runs/{run_id}", api, ok=lambda r: r.status_code in (200, 400)
                )
        if item.webhook:
            self._report_running(run_id, api, t)
        if item.resubmit:
            if self.wait_for(run_id, api, FINAL, 1800) in FINAL:
                r = self.call(
                    "POST", f"/api/runs/{run_id}/resubmit", api + 1, params={"submitter": "soak-re"}
                )
                self._track(item, int(r.json()["runId"]), parent=run_id)

    def _hook(self, run_id: int) -> str:
        return str(self.stack.rows("select webhook_id from runs where id = %s", run_id)[0][0])

    def _read_input(self, run_id: int, api: int, content: bytes, t: Tracked) -> None:
        """The job's side: it fetches its input file through the webhook."""
        r = self.call(
            "GET",
            f"/api/webhooks/runs/{self._hook(run_id)}/files/input.txt",
            api,
            headers={"X-Api-Token": WEBHOOK_TOKEN},
            ok=lambda r: r.status_code in (200, 404),
        )
        if r.status_code != 200 or r.content != content:
            t.notes.append(f"input file read back as {r.status_code} {r.content[:60]!r}")

    def _report_running(self, run_id: int, api: int, t: Tracked) -> None:
        """The job's side: once dispatched, it says it is running. A 404 once final is fine, and
        so is a 409: the run moved on meanwhile (a stop, or a takeover that found it mid-dispatch)
        and says so; whether a run was lost is the checker's business, from the run itself."""
        status = self.wait_for(run_id, api, {"SUBMITTED", "RUNNING", *FINAL}, 1800)
        if status in FINAL:
            return
        r = self.call(
            "POST",
            f"/api/webhooks/runs/{self._hook(run_id)}",
            api,
            json={"status": "RUNNING"},
            headers={"X-Api-Token": WEBHOOK_TOKEN},
            ok=lambda r: r.status_code in (200, 404, 409),
        )
        if r.status_code == 409:
            t.notes.append(f"webhook RUNNING answered 409: {r.text[:120]}")

    def _cancel_in_prefect(self, run_id: int, t: Tracked) -> None:
        """Cancel pressed in the Prefect UI: the flow run is set Cancelling."""
        assert self.stack.prefect is not None
        deadline = time.monotonic() + RETRY_FOR
        while time.monotonic() < deadline:
            try:
                rows = self.stack.rows("select flow_run_id, status from runs where id = %s", run_id)
                flow_run, status = rows[0]
                if status in FINAL:
                    return
                if flow_run:
                    r = httpx.post(
                        f"{self.stack.prefect.api_url}/flow_runs/{flow_run}/set_state",
                        json={"state": {"type": "CANCELLING", "name": "Cancelling"}},
                        timeout=20,
                    )
                    if r.status_code < 300:
                        return
            except (httpx.HTTPError, OSError, RuntimeError) as exc:
                t.notes.append(f"prefect cancel retried: {exc!r}"[:200])
            except Exception as exc:  # psycopg errors while PostgreSQL is down
                t.notes.append(f"prefect cancel retried: {exc!r}"[:200])
            time.sleep(1.0)
        t.notes.append("prefect cancel never sent")
