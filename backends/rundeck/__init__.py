"""``rundeckBackend``: runs a Rundeck / PagerDuty Process Automation job through its API.

Configuration (section ``[rundeck.<instance>]`` of the ``ASCOB_CONFIG`` TOML file)::

    [rundeck.ops]
    url = "https://rundeck.example"
    token_env = "RUNDECK_OPS_TOKEN"  # the API token is read from this environment variable
    # api_version = 41               # the API version in every path (/api/41/...)
    # timeout = 30                   # seconds per HTTP call
    # run_option = "ASCOB_RUN"       # the option that carries a value unique to each run ("": none)

Labels: ``rundeck_instance`` (may be left out when one instance is configured), and either
``rundeck_job_id`` or ``rundeck_project_name`` + ``rundeck_job_name`` (the exact name; a group
may be given as ``group/sub/name``). Job parameters become job options.

Every run is sent with one more option, ``ASCOB_RUN=<runId>-<nonce>`` (``run_option``): Rundeck
keeps options a job does not declare in the execution's ``argstring``, so when the answer to a
run request is lost (a timeout, a 5xx) the execution that carries the value is looked for among
the job's latest executions (``SubmitUnknown``) instead of the run ending IN_DOUBT.

Identification keys: ``rundeckInstance``, ``rundeckJobId``, ``rundeckExecutionId``, and
``rundeckRunValue`` (the value of ``run_option``; alone, without ``rundeckExecutionId``, when the
execution was found after a lost answer).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise as pairs
from typing import Any, ClassVar, NoReturn

import httpx

from backends._http import ClientsPerLoop, describe, not_sent, secret_from_env
from backends.base import (
    Backend,
    BackendContext,
    BackendStatus,
    BackendUnavailable,
    Job,
    JobNotFound,
    OutputChunk,
    SpecRejected,
    StatusReport,
    SubmitRefused,
    SubmitUnknown,
)
from backends.rundeck.client import (
    DEFAULT_API_VERSION,
    RundeckClient,
    RundeckHTTPError,
    RundeckProtocolError,
)

__all__ = ["STATUSES", "RundeckBackend", "RundeckClient"]

log = logging.getLogger(__name__)

INSTANCE_LABEL = "rundeck_instance"
PROJECT_LABEL = "rundeck_project_name"
JOB_NAME_LABEL = "rundeck_job_name"
JOB_ID_LABEL = "rundeck_job_id"

# Rundeck execution status -> ASCOB. ``failed-with-retry`` is followed to the retry;
# ``other`` (a custom status) is final once the execution has ended.
STATUSES = {
    "scheduled": BackendStatus.QUEUED,
    "queued": BackendStatus.QUEUED,
    "running": BackendStatus.RUNNING,
    "succeeded": BackendStatus.SUCCEEDED,
    "failed": BackendStatus.FAILED,
    "aborted": BackendStatus.ABORTED,
    "timedout": BackendStatus.FAILED,
    "incomplete": BackendStatus.FAILED,
    "missed": BackendStatus.FAILED,
}
_MAX_RETRIES_FOLLOWED = 20
DEFAULT_RUN_OPTION = "ASCOB_RUN"
# how far back a lost run request's execution is looked for: pages of the job's executions
_SEARCH_PAGES, _SEARCH_PAGE_SIZE = 10, 50


@dataclass(frozen=True)
class Instance:
    name: str
    url: str
    token_env: str | None
    api_version: int
    timeout: float
    run_option: str

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any]) -> Instance:
        if not isinstance(raw, Mapping) or not raw.get("url"):
            raise ValueError(f"[rundeck.{name}] needs a url")
        return cls(
            name=name,
            url=str(raw["url"]),
            token_env=str(raw["token_env"]) if raw.get("token_env") else None,
            api_version=int(raw.get("api_version", DEFAULT_API_VERSION)),
            timeout=float(raw.get("timeout", 30.0)),
            run_option=str(raw.get("run_option", DEFAULT_RUN_OPTION)),
        )

    def token(self) -> str | None:
        return secret_from_env("rundeck", self.name, self.token_env)


class RundeckBackend(Backend):
    id: ClassVar[str] = "rundeckBackend"
    config_section: ClassVar[str] = "rundeck"
    can_stop: ClassVar[bool] = True

    def __init__(
        self, context: BackendContext, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        super().__init__(context)
        self.instances = {
            name: Instance.parse(name, raw) for name, raw in dict(context.instances).items()
        }
        self._transport = transport
        self._clients: ClientsPerLoop[RundeckClient] = ClientsPerLoop()
        self._found: dict[tuple[str, str], str] = {}  # (instance, run value) -> execution id

    # ------------------------------------------------------------------ spec

    def accepts(self, labels: Mapping[str, str], description: str | None) -> bool:
        return JOB_ID_LABEL in labels or JOB_NAME_LABEL in labels

    def _instance_name(self, labels: Mapping[str, str]) -> str:
        name = labels.get(INSTANCE_LABEL)
        configured = ", ".join(sorted(self.instances)) or "none"
        if not name:
            if len(self.instances) == 1:
                return next(iter(self.instances))
            raise SpecRejected(f"label {INSTANCE_LABEL} is required (configured: {configured})")
        if name not in self.instances:
            raise SpecRejected(
                f"{INSTANCE_LABEL}={name!r} is not configured (configured: {configured}; "
                "see [rundeck.<name>] in the ASCOB_CONFIG file)"
            )
        return name

    def validate(self, labels: Mapping[str, str]) -> None:
        self._instance_name(labels)
        if labels.get(JOB_ID_LABEL):
            return
        if not (labels.get(PROJECT_LABEL) and labels.get(JOB_NAME_LABEL)):
            raise SpecRejected(
                f"label {JOB_ID_LABEL}, or labels {PROJECT_LABEL} and {JOB_NAME_LABEL}, "
                "are required"
            )

    def _client(self, name: str) -> RundeckClient:
        inst = self.instances[name]
        return self._clients.get(
            name,
            lambda: RundeckClient(
                inst.url, inst.token(), inst.api_version, inst.timeout, transport=self._transport
            ),
        )

    def _instance_client(self, keys: Mapping[str, str]) -> tuple[Instance, RundeckClient]:
        name = keys.get("rundeckInstance", "")
        if name not in self.instances:
            raise BackendUnavailable(f"rundeck instance {name!r} is no longer configured")
        try:
            return self.instances[name], self._client(name)
        except SubmitRefused as exc:
            raise BackendUnavailable(str(exc)) from exc

    async def _known(self, keys: Mapping[str, str]) -> tuple[RundeckClient, str]:
        """The client and the execution id the keys name (looked for by the run value when the
        answer to the run request was lost)."""
        execution_id = keys.get("rundeckExecutionId")
        value, job_id = keys.get("rundeckRunValue", ""), keys.get("rundeckJobId", "")
        if not execution_id and not (value and job_id):
            raise JobNotFound("identification keys carry no rundeckExecutionId")
        inst, client = self._instance_client(keys)
        if execution_id:
            return client, execution_id
        found = self._found.get((inst.name, value))
        if found is None:
            found = await self._search(inst, client, job_id, value)
            self._found[(inst.name, value)] = found
        return client, found

    async def _search(self, inst: Instance, client: RundeckClient, job_id: str, value: str) -> str:
        with _following():
            for page in range(_SEARCH_PAGES):
                executions = await client.job_executions(
                    job_id, _SEARCH_PAGE_SIZE, page * _SEARCH_PAGE_SIZE
                )
                for execution in executions:
                    if _carries(execution, inst.run_option, value):
                        return str(execution["id"])
                if len(executions) < _SEARCH_PAGE_SIZE:
                    break
        raise JobNotFound(
            f"rundeck {inst.name!r}: no execution of job {job_id} among its latest "
            f"{_SEARCH_PAGES * _SEARCH_PAGE_SIZE} carries {inst.run_option}={value}"
        )

    # ------------------------------------------------------------------ submit

    async def _job_id(self, client: RundeckClient, labels: Mapping[str, str], where: str) -> str:
        job_id = labels.get(JOB_ID_LABEL)
        if job_id:
            await client.job_info(job_id)
            return job_id
        project, full_name = labels[PROJECT_LABEL], labels[JOB_NAME_LABEL].strip("/")
        group, _, name = full_name.rpartition("/")
        jobs = await client.find_jobs(project, name, group or None)
        if not jobs:
            raise SubmitRefused(f"{where}: no job named {full_name!r} in project {project!r}")
        if len(jobs) > 1:
            found = ", ".join(f"{j.get('group') or '(no group)'}/{j.get('name')}" for j in jobs)
            raise SubmitRefused(
                f"{where}: {len(jobs)} jobs named {name!r} in project {project!r} ({found}); "
                f"give the group as {JOB_NAME_LABEL}=group/{name} or use {JOB_ID_LABEL}"
            )
        return str(jobs[0]["id"])

    async def submit(self, job: Job) -> dict[str, str]:
        self.validate(job.labels)
        name = self._instance_name(job.labels)
        client = self._client(name)
        where = f"rundeck {name!r}"
        # Before the run request nothing has run: a refusal, or an unavailable Rundeck (not_sent)
        try:
            job_id = await self._job_id(client, job.labels, where)
        except RundeckHTTPError as exc:
            if exc.status_code == 404:
                raise SubmitRefused(f"{where}: no such job or project ({exc.message})") from exc
            raise not_sent(exc, f"{where}: {exc}") from exc
        except (httpx.HTTPError, RundeckProtocolError, KeyError) as exc:
            raise not_sent(exc, f"{where}: cannot find the job ({describe(exc)})") from exc
        options = dict(job.parameters)
        keys = {"rundeckInstance": name, "rundeckJobId": job_id}
        run_option = self.instances[name].run_option
        if run_option:
            keys["rundeckRunValue"] = options[run_option] = f"{job.run_id}-{uuid.uuid4().hex[:12]}"
        try:
            execution = await client.run_job(job_id, options)
            if execution.get("id") is None:
                raise RundeckProtocolError("run answered without an execution id")
        except RundeckHTTPError as exc:
            if exc.status_code < 500:
                raise SubmitRefused(f"{where} job {job_id}: {exc}") from exc
            _lost(f"{where} job {job_id}: run answered {exc}; outcome unknown", keys, exc)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent
            raise BackendUnavailable(f"{where}: cannot connect ({describe(exc)})") from exc
        except (httpx.HTTPError, RundeckProtocolError) as exc:
            _lost(f"{where} job {job_id}: {describe(exc)}; outcome unknown", keys, exc)
        log.info("run %s: %s job %s is execution %s", job.run_id, where, job_id, execution["id"])
        return {**keys, "rundeckExecutionId": str(execution["id"])}

    # ------------------------------------------------------------------ follow

    async def _retry_of(self, client: RundeckClient, job_id: str, execution_id: str) -> str | None:
        for other in await client.job_executions(job_id):
            retried = other.get("retriedExecution")
            if isinstance(retried, dict) and str(retried.get("id")) == execution_id:
                return str(other.get("id"))
        return None

    async def status(self, keys: Mapping[str, str]) -> StatusReport:
        with _following():
            client, execution_id = await self._known(keys)
            for _ in range(_MAX_RETRIES_FOLLOWED):
                execution = await client.execution(execution_id)
                state = str(execution.get("status", ""))
                url = execution.get("permalink") or execution.get("href")
                if state != "failed-with-retry":
                    break
                retry = await self._retry_of(client, keys.get("rundeckJobId", ""), execution_id)
                if retry is None:
                    pending = f"execution {execution_id} failed; retry pending"
                    return StatusReport(BackendStatus.RUNNING, pending, url)
                execution_id = retry
        mapped = STATUSES.get(state)
        if mapped is BackendStatus.QUEUED and execution_id != keys.get("rundeckExecutionId"):
            mapped = BackendStatus.RUNNING  # a retry waiting to start: the run goes on
        ended = bool(execution.get("date-ended"))
        if mapped is None:  # "other": a custom status; anything unknown likewise
            custom = execution.get("customStatus") or state or "unknown"
            if not ended:
                return StatusReport(BackendStatus.RUNNING, f"status {custom}", url)
            return StatusReport(
                BackendStatus.FAILED, f"execution {execution_id} ended with status {custom}", url
            )
        message: str | None = None
        if mapped in (BackendStatus.FAILED, BackendStatus.ABORTED):
            message = f"execution {execution_id}: {state}"
        return StatusReport(mapped, message, url)

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        client, execution_id = await self._known(keys)
        try:
            answer = await client.abort(execution_id, force)
        except RundeckHTTPError as exc:
            raise BackendUnavailable(f"rundeck abort: {exc}") from exc
        except (httpx.HTTPError, RundeckProtocolError) as exc:
            raise BackendUnavailable(f"rundeck abort: {describe(exc)}") from exc
        abort = answer.get("abort") or {}
        if isinstance(abort, dict) and abort.get("status") == "failed":
            raise BackendUnavailable(f"rundeck abort failed: {abort.get('reason') or 'no reason'}")

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> OutputChunk:
        client, execution_id = await self._known(keys)
        with _following():
            data = await client.output(execution_id, offset)
            next_offset = int(data.get("offset", offset))
        entries = data.get("entries") or []
        text = "".join(
            f"{e.get('log', '')}\n" for e in entries if isinstance(e, dict) and "log" in e
        )
        completed = bool(data.get("execCompleted", data.get("completed")))
        more = not (completed and data.get("completed", True))
        return OutputChunk(text, next_offset, more)

    async def aclose(self) -> None:
        await self._clients.aclose()


@contextmanager
def _following() -> Iterator[None]:
    """Rundeck's errors while following a job: a 404 means the job is not there; any other
    failure may pass (``BackendUnavailable``)."""
    try:
        yield
    except RundeckHTTPError as exc:
        if exc.status_code == 404:
            raise JobNotFound(f"rundeck: {exc}") from exc
        raise BackendUnavailable(f"rundeck: {exc}") from exc
    except (httpx.HTTPError, RundeckProtocolError, KeyError, ValueError, TypeError) as exc:
        raise BackendUnavailable(f"rundeck: {describe(exc)}") from exc


def _lost(message: str, keys: Mapping[str, str], cause: Exception) -> NoReturn:
    """The run request's outcome is unknown: with a run value the execution can be looked for."""
    if "rundeckRunValue" in keys:
        raise SubmitUnknown(message, keys) from cause
    raise RuntimeError(message) from cause


def _carries(execution: Mapping[str, Any], option: str, value: str) -> bool:
    """Whether a Rundeck execution was run with ``option=value`` (its job options, or its
    argstring ``-option value``, the value quoted when it holds spaces)."""
    job = execution.get("job")
    options = job.get("options") if isinstance(job, Mapping) else None
    if isinstance(options, Mapping) and str(options.get(option, "")) == value:
        return True
    words = str(execution.get("argstring") or "").split()
    return any(flag == f"-{option}" and given.strip("\"'") == value for flag, given in pairs(words))
