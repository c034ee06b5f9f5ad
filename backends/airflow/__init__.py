"""``airflowBackend``: runs an Apache Airflow DAG (Airflow 2 or 3) through its REST API.

Configuration (section ``[airflow.<instance>]`` of the ``ASCOB_CONFIG`` TOML file)::

    [airflow.etl]
    url = "https://airflow.example"   # the webserver / api-server, without /api/...
    api = "v2"                        # "v2": Airflow 3 (/api/v2); "v1": Airflow 2 (/api/v1)
    username = "ascob"                # v2: exchanged at POST /auth/token for a JWT; v1: basic auth
    password_env = "AIRFLOW_ETL_PASSWORD"
    # token_env = "AIRFLOW_ETL_TOKEN" # instead of username/password: a ready bearer token
    # timeout = 30                    # seconds per HTTP call
    # trigger_attempts = 5            # tries of one trigger before its outcome is unknown

Labels: ``airflow_instance`` (may be left out when one instance is configured) and
``airflow_dag_id``. Job parameters become the dag run's ``conf``.

Submission reads the DAG first: an unknown DAG, bad credentials or a paused DAG (whose run would
wait in the queue until someone unpauses it) are refused, nothing started. The trigger names its
own dag run, ``ascob-<runId>-<nonce>``, so a trigger whose answer was lost is simply sent again
with the same name: Airflow creates at most one run of that name and answers the repeat with 409,
and a run of that name carrying our conf is ours. Only when Airflow gives no clear answer for
``trigger_attempts`` tries does the outcome stay unknown (IN_DOUBT).

Identification keys: ``airflowInstance``, ``airflowDagId``, ``airflowDagRunId``; nothing else is
needed after a restart. A stop marks the dag run ``failed`` and sets its note to
``Stopped through ASCOB …``: that note, read back from Airflow, is how a failed run is known to be
ABORTED, also by another process.

Output: the task instances' logs, ordered by start date (see :mod:`backends.airflow.logs`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from backends.airflow.client import (
    API_VERSIONS,
    AirflowClient,
    AirflowHTTPError,
    AirflowProtocolError,
)
from backends.airflow.logs import TaskLogs
from backends.base import (
    BackendStatus,
    BackendUnavailable,
    Job,
    JobNotFound,
    OutcomeUnknown,
    OutputChunk,
    SpecRejected,
    StatusReport,
    SubmitRefused,
)
from backends.kit import (
    KitBackend,
    RestInstance,
    before_sending,
    describe,
    following,
    may_have_arrived,
    not_sent,
    required,
    secret_from_env,
)

__all__ = ["STATES", "AirflowBackend", "AirflowClient"]

log = logging.getLogger(__name__)

DAG_LABEL = "airflow_dag_id"
STOP_NOTE = "Stopped through ASCOB"
# seconds a stopped run's task may go on logging once Airflow marked it failed (its process is
# killed after a few seconds); within them ASCOB reads on until the log says the process is over
STOP_GRACE = 30.0

# DagRunState -> ASCOB (``failed`` is ABORTED when ASCOB stopped the run). Any other value is
# not an answer yet: polling goes on.
STATES = {
    "queued": BackendStatus.QUEUED,
    "running": BackendStatus.RUNNING,
    "success": BackendStatus.SUCCEEDED,
    "failed": BackendStatus.FAILED,
}
_RUN_FINAL = ("success", "failed")
_ASCOB_RUN = re.compile(r"^ascob-(\d+)-")


@dataclass(frozen=True)
class Instance(RestInstance):
    kind = "airflow"
    api: str = "v2"
    username: str | None = None
    password_env: str | None = None
    trigger_attempts: int = 5

    @classmethod
    def parse(cls, name: str, raw: Any) -> Instance:
        common = cls.common(name, raw)
        api = str(raw.get("api", "v2"))
        if api not in API_VERSIONS:
            raise ValueError(
                f'[airflow.{name}] api = "{api}": use "v1" (Airflow 2) or "v2" (Airflow 3)'
            )
        username = str(raw["username"]) if raw.get("username") else None
        password_env = str(raw["password_env"]) if raw.get("password_env") else None
        if username and not password_env:
            raise ValueError(f"[airflow.{name}] username needs password_env")
        return cls(
            **{**common, "url": common["url"].rstrip("/")},
            api=api,
            username=username,
            password_env=password_env,
            trigger_attempts=max(1, int(raw.get("trigger_attempts", 5))),
        )

    def password(self) -> str | None:
        what = f"the password of {self.username}"
        return secret_from_env(self.kind, self.name, self.password_env, what)

    def web_url(self, dag_id: str, run_id: str) -> str:
        if self.api == "v1":
            return f"{self.url}/dags/{quote(dag_id)}/grid?dag_run_id={quote(run_id, safe='')}"
        return f"{self.url}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"


class AirflowBackend(KitBackend[Instance, AirflowClient]):
    id = "airflowBackend"
    config_section = "airflow"
    takes = (DAG_LABEL,)
    instance_type = Instance

    def setup(self) -> None:
        # what was served of each dag run's output (append-only), kept across restarts
        self._logs = TaskLogs(Path(self.context.data_dir) / "transcripts", grace=STOP_GRACE)
        self._stopped: set[tuple[str, str, str]] = set()  # stops sent by this process
        self.retry_delay = 0.5  # first pause between trigger attempts (doubles, up to 5 s)

    # ------------------------------------------------------------------ spec

    def validate(self, labels: Mapping[str, str]) -> None:
        super().validate(labels)
        if not labels.get(DAG_LABEL, "").strip():
            raise SpecRejected(f"label {DAG_LABEL} is required (the DAG to trigger)")

    def make_client(self, instance: Instance) -> AirflowClient:
        token = instance.token()
        return AirflowClient(
            instance.url,
            instance.api,
            username=None if token else instance.username,
            password=None if token else instance.password(),
            token=token,
            timeout=instance.timeout,
            transport=self.transport,
        )

    def _known(self, keys: Mapping[str, str]) -> tuple[Instance, AirflowClient, str, str]:
        dag_id, run_id = required(keys, "airflowDagId", "airflowDagRunId")
        return *self.known(keys), dag_id, run_id

    # ------------------------------------------------------------------ submit

    async def submit(self, job: Job) -> dict[str, str]:
        self.validate(job.labels)
        inst = self.instances.for_labels(job.labels)
        name = inst.name
        dag_id = job.labels[DAG_LABEL].strip()
        where = f"airflow {name!r} DAG {dag_id!r}"
        client = self.client(inst)
        with before_sending(where, "the DAG"):
            try:
                dag = await client.get_dag(dag_id)
            except AirflowHTTPError as exc:
                hint = await self._api_hint(inst, client, exc)
                if not hint:
                    raise
                raise not_sent(exc, f"{where}: {exc}{hint}") from exc
        if dag.get("is_paused"):
            raise SubmitRefused(
                f"{where}: DAG is paused; its run would wait in the queue until someone unpauses "
                "it, so ASCOB did not trigger it (unpause the DAG in Airflow)"
            )
        run_id = f"ascob-{job.run_id}-{uuid.uuid4().hex[:12]}"
        conf = dict(job.parameters)
        body: dict[str, Any] = {"dag_run_id": run_id, "conf": conf}
        if inst.api == "v2":
            body["logical_date"] = None  # required by Airflow 3; null lets runs share a date
            body["note"] = f"ASCOB run {job.run_id}" + (
                f" for {job.submitter}" if job.submitter else ""
            )
        await self._trigger(inst, client, dag_id, body, where)
        log.info("run %s: %s triggered as dag run %s", job.run_id, where, run_id)
        return {"airflowInstance": name, "airflowDagId": dag_id, "airflowDagRunId": run_id}

    async def _api_hint(self, inst: Instance, client: AirflowClient, exc: AirflowHTTPError) -> str:
        """What to change when ``api = "v1"`` meets an Airflow 3 (which answers 404 there)."""
        if inst.api != "v1" or exc.status_code != 404:
            return ""
        version = None
        if "/api/v2" not in exc.message:
            try:  # the message may not say it (a proxy's 404): ask /api/v2/version
                answer = await client.request("GET", f"{client.root}/api/v2/version")
                version = answer.json().get("version")
            except (httpx.HTTPError, AirflowHTTPError, ValueError, AttributeError):
                return ""
            if not version:
                return ""
        speaks = f"Airflow {version}" if version else "this Airflow"
        return (
            f' ({speaks} speaks the v2 API of Airflow 3, not v1: set api = "v2" in '
            f"[airflow.{inst.name}])"
        )

    async def _trigger(
        self, inst: Instance, client: AirflowClient, dag_id: str, body: dict[str, Any], where: str
    ) -> None:
        """Create the dag run, sending the same trigger again while the answer is unclear."""
        run_id, conf = body["dag_run_id"], body["conf"]
        maybe_sent = False  # whether an earlier attempt may have created the run
        last: Exception | None = None
        delay = self.retry_delay
        for attempt in range(1, inst.trigger_attempts + 1):
            try:
                await client.trigger(dag_id, body)
                return
            except AirflowHTTPError as exc:
                if exc.status_code == 409:
                    ours = await self._look_for(client, dag_id, run_id, conf, where)
                    if ours:
                        log.info("%s: dag run %s exists already (a lost answer)", where, run_id)
                        return
                    if ours is False and not maybe_sent:
                        raise SubmitRefused(f"{where}: {exc}") from exc
                elif exc.status_code < 500 and not maybe_sent:
                    raise SubmitRefused(f"{where}: {exc}") from exc
                elif exc.status_code >= 500:
                    maybe_sent = True
                last = exc
            except (httpx.HTTPError, AirflowProtocolError) as exc:
                maybe_sent = maybe_sent or may_have_arrived(exc)
                last = exc
            if attempt < inst.trigger_attempts:
                log.warning(
                    "%s: trigger of %s unclear (%s); sending it again in %.1f s",
                    where,
                    run_id,
                    describe(last) if last else "?",
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if not maybe_sent:
            raise SubmitRefused(
                f"{where}: cannot reach Airflow ({describe(last) if last else '?'})"
            )
        if await self._look_for(client, dag_id, run_id, conf, where):
            return  # a last look: the run exists although no answer said so
        raise OutcomeUnknown(
            f"{where}: trigger of dag run {run_id} got no clear answer in "
            f"{inst.trigger_attempts} attempts ({describe(last) if last else '?'}); outcome unknown"
        )

    async def _look_for(
        self, client: AirflowClient, dag_id: str, run_id: str, conf: dict[str, str], where: str
    ) -> bool | None:
        """Whether a dag run of our name exists with our conf: True, False (404), or None when
        Airflow gives no clear answer."""
        try:
            run = await client.get_dag_run(dag_id, run_id)
        except AirflowHTTPError as exc:
            if exc.status_code == 404:
                return False
            log.warning("%s: cannot look for dag run %s: %s", where, run_id, exc)
            return None
        except (httpx.HTTPError, AirflowProtocolError) as exc:
            log.warning("%s: cannot look for dag run %s: %s", where, run_id, describe(exc))
            return None
        if (run.get("conf") or {}) != conf:
            raise SubmitRefused(
                f"{where}: a dag run named {run_id} exists with another conf; it is not "
                "ASCOB's and ASCOB started nothing"
            )
        return True

    # ------------------------------------------------------------------ follow

    async def status(self, keys: Mapping[str, str]) -> StatusReport:
        inst, client, dag_id, run_id = self._known(keys)
        try:
            run = await client.get_dag_run(dag_id, run_id)
        except AirflowHTTPError as exc:
            if exc.status_code == 404:
                raise JobNotFound(f"airflow: {exc}") from exc
            raise BackendUnavailable(f"airflow: {exc}") from exc
        except (httpx.HTTPError, AirflowProtocolError) as exc:
            raise BackendUnavailable(f"airflow: {describe(exc)}") from exc
        url = inst.web_url(dag_id, run_id)
        state = run.get("state")
        mapped = STATES.get(str(state))
        if mapped is None:
            raise BackendUnavailable(
                f"airflow: dag run {run_id} is in state {state!r}, which ASCOB does not map; "
                "asking again later"
            )
        if mapped is BackendStatus.FAILED:
            note = str(run.get("note") or "")
            if note.startswith(STOP_NOTE) or (inst.name, dag_id, run_id) in self._stopped:
                stopping = await self._stopping(inst, client, dag_id, run_id)
                if stopping:
                    return StatusReport(BackendStatus.RUNNING, stopping, url)
                return StatusReport(BackendStatus.ABORTED, note or STOP_NOTE, url)
            return StatusReport(mapped, await self._failure(client, dag_id, run_id), url)
        if mapped is BackendStatus.SUCCEEDED:
            return StatusReport(mapped, f"dag run {run_id} succeeded", url)
        if mapped is BackendStatus.QUEUED:
            return StatusReport(mapped, await self._queued(client, dag_id, run_id), url)
        return StatusReport(mapped, f"dag run {run_id}: {state}", url)

    async def _stopping(
        self, inst: Instance, client: AirflowClient, dag_id: str, run_id: str
    ) -> str | None:
        """While a stopped run's tasks are still ending (Airflow marked them failed; their
        processes log on until killed): what to say; None once they are over."""
        try:
            tis = await client.task_instances(dag_id, run_id)
            _, complete = await self._logs.text(client, inst.name, dag_id, run_id, tis)
        except (httpx.HTTPError, AirflowHTTPError, AirflowProtocolError) as exc:
            log.debug("airflow: cannot read the logs of stopped %s: %s", run_id, describe(exc))
            return None  # the stop stands; only its last lines may be missed
        if complete:
            return None
        return (
            f"stopping: dag run {run_id} is marked failed; its task's process is ending "
            f"(ASCOB waits up to {self._logs.grace:.0f} s for its last lines)"
        )

    async def _queued(self, client: AirflowClient, dag_id: str, run_id: str) -> str:
        """Why the dag run waits, as far as Airflow says: its DAG's max_active_runs reached,
        the DAG paused (after the trigger), or the scheduler not having started it yet."""
        message = f"dag run {run_id} is queued in Airflow"
        try:
            dag = await client.get_dag(dag_id)
            running = await client.count_dag_runs(dag_id, "running")
        except (httpx.HTTPError, AirflowHTTPError, AirflowProtocolError) as exc:
            log.debug("airflow: cannot tell why %s is queued: %s", run_id, describe(exc))
            return message
        if dag.get("is_paused"):
            return f"{message}: DAG {dag_id} is paused (unpause it in Airflow)"
        limit = dag.get("max_active_runs")
        if isinstance(limit, int) and limit > 0 and running is not None and running >= limit:
            return (
                f"{message}: DAG {dag_id} allows {limit} active run(s) at once "
                f"(max_active_runs) and {running} running"
            )
        return f"{message}, waiting for its scheduler to start it"

    async def _failure(self, client: AirflowClient, dag_id: str, run_id: str) -> str:
        message = f"dag run {run_id} failed"
        try:
            tis = await client.task_instances(dag_id, run_id)
        except Exception as exc:  # only the message is lost
            log.debug("airflow: cannot list task instances of %s: %s", run_id, describe(exc))
            return message
        failed = sorted({str(t.get("task_id")) for t in tis if t.get("state") == "failed"})
        return f"{message} (failed tasks: {', '.join(failed)})" if failed else message

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        """Mark the dag run failed (Airflow then stops its running tasks) with a note naming the
        ASCOB run; a forced stop does the same, Airflow has nothing stronger."""
        inst, client, dag_id, run_id = self._known(keys)
        match = _ASCOB_RUN.match(run_id)
        note = f"{STOP_NOTE} (run {match.group(1) if match else run_id})"
        with following("airflow stop"):
            run = await client.get_dag_run(dag_id, run_id)
            if run.get("state") in _RUN_FINAL:
                return  # over already: marking it would rewrite its outcome
            self._stopped.add((inst.name, dag_id, run_id))
            if inst.api == "v2":
                await client.patch_dag_run(dag_id, run_id, {"state": "failed", "note": note})
                return
            try:
                await client.set_note(dag_id, run_id, note)
            except AirflowHTTPError as exc:  # Airflow < 2.5 has no notes
                if exc.status_code not in (404, 405):
                    raise
                log.warning("airflow %s: cannot set the note of %s: %s", inst.name, run_id, exc)
            await client.patch_dag_run(dag_id, run_id, {"state": "failed"})

    # ------------------------------------------------------------------ output

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> OutputChunk:
        inst, client, dag_id, run_id = self._known(keys)
        try:
            run = await client.get_dag_run(dag_id, run_id)  # first: then the tasks are as final
            tis = await client.task_instances(dag_id, run_id)
            text, complete = await self._logs.text(client, inst.name, dag_id, run_id, tis)
        except AirflowHTTPError as exc:
            if exc.status_code == 404:
                raise JobNotFound(f"airflow: {exc}") from exc
            raise BackendUnavailable(f"airflow: {exc}") from exc
        except (httpx.HTTPError, AirflowProtocolError) as exc:
            raise BackendUnavailable(f"airflow: {describe(exc)}") from exc
        data = text.encode()
        more = run.get("state") not in _RUN_FINAL or not complete
        piece = data[offset:].decode("utf-8", errors="replace")
        return OutputChunk(piece, max(offset, len(data)), more)
