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

__all__ = ["STATUSES", "RundeckBackend", "RundeckClient"]

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise as pairs
from typing import Any, NoReturn

import httpx

from backends import kit
from backends.rundeck.client import DEFAULT_API_VERSION, RundeckClient

log = logging.getLogger(__name__)

PROJECT_LABEL = "rundeck_project_name"
JOB_NAME_LABEL = "rundeck_job_name"
JOB_ID_LABEL = "rundeck_job_id"

# Rundeck execution status -> ASCOB. ``failed-with-retry`` is followed to the retry;
# ``other`` (a custom status) is final once the execution has ended.
STATUSES = kit.statuses(
    queued=("scheduled", "queued"),
    running=("running",),
    succeeded=("succeeded",),
    failed=("failed", "timedout", "incomplete", "missed"),
    aborted=("aborted",),
)
_MAX_RETRIES_FOLLOWED = 20
DEFAULT_RUN_OPTION = "ASCOB_RUN"
# how far back a lost run request's execution is looked for: pages of the job's executions
_SEARCH_PAGES, _SEARCH_PAGE_SIZE = 10, 50


@dataclass(frozen=True)
class Instance(kit.RestInstance):
    kind = "rundeck"
    api_version: int = DEFAULT_API_VERSION
    run_option: str = DEFAULT_RUN_OPTION

    @classmethod
    def parse(cls, name: str, raw: Any) -> Instance:
        return cls(
            **cls.common(name, raw),
            api_version=int(raw.get("api_version", DEFAULT_API_VERSION)),
            run_option=str(raw.get("run_option", DEFAULT_RUN_OPTION)),
        )


class RundeckBackend(kit.KitBackend[Instance, RundeckClient]):
    id = "rundeckBackend"
    config_section = "rundeck"
    takes = (JOB_ID_LABEL, JOB_NAME_LABEL)
    instance_type = Instance

    def setup(self) -> None:
        self._found: dict[tuple[str, str], str] = {}  # (instance, run value) -> execution id

    def make_client(self, instance: Instance) -> RundeckClient:
        url = f"{instance.url.rstrip('/')}/api/{instance.api_version}"
        return RundeckClient(
            url, instance.token(), timeout=instance.timeout, transport=self.transport
        )

    # ------------------------------------------------------------------ spec

    def validate(self, labels: Mapping[str, str]) -> None:
        super().validate(labels)
        if labels.get(JOB_ID_LABEL):
            return
        if not (labels.get(PROJECT_LABEL) and labels.get(JOB_NAME_LABEL)):
            raise kit.SpecRejected(
                f"label {JOB_ID_LABEL}, or labels {PROJECT_LABEL} and {JOB_NAME_LABEL}, "
                "are required"
            )

    async def _known(self, keys: Mapping[str, str]) -> tuple[RundeckClient, str]:
        """The client and the execution id the keys name (looked for by the run value when the
        answer to the run request was lost)."""
        execution_id = keys.get("rundeckExecutionId")
        value, job_id = keys.get("rundeckRunValue", ""), keys.get("rundeckJobId", "")
        if not execution_id and not (value and job_id):
            raise kit.JobNotFound("identification keys carry no rundeckExecutionId")
        inst, client = self.known(keys)
        if execution_id:
            return client, execution_id
        found = self._found.get((inst.name, value))
        if found is None:
            found = await self._search(inst, client, job_id, value)
            self._found[(inst.name, value)] = found
        return client, found

    async def _search(self, inst: Instance, client: RundeckClient, job_id: str, value: str) -> str:
        with _following("rundeck"):
            for page in range(_SEARCH_PAGES):
                executions = await client.job_executions(
                    job_id, _SEARCH_PAGE_SIZE, page * _SEARCH_PAGE_SIZE
                )
                for execution in executions:
                    if _carries(execution, inst.run_option, value):
                        return str(execution["id"])
                if len(executions) < _SEARCH_PAGE_SIZE:
                    break
        raise kit.JobNotFound(
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
            raise kit.SubmitRefused(f"{where}: no job named {full_name!r} in project {project!r}")
        if len(jobs) > 1:
            found = ", ".join(f"{j.get('group') or '(no group)'}/{j.get('name')}" for j in jobs)
            raise kit.SubmitRefused(
                f"{where}: {len(jobs)} jobs named {name!r} in project {project!r} ({found}); "
                f"give the group as {JOB_NAME_LABEL}=group/{name} or use {JOB_ID_LABEL}"
            )
        return str(jobs[0]["id"])

    async def submit(self, job: kit.Job) -> dict[str, str]:
        self.validate(job.labels)
        inst = self.instances.for_labels(job.labels)
        client = self.client(inst)
        where = f"rundeck {inst.name!r}"
        with kit.before_sending(where, "the job", "no such job or project", also=(KeyError,)):
            job_id = await self._job_id(client, job.labels, where)
        options = dict(job.parameters)
        keys = {"rundeckInstance": inst.name, "rundeckJobId": job_id}
        run_option = inst.run_option
        if run_option:
            keys["rundeckRunValue"] = options[run_option] = f"{job.run_id}-{uuid.uuid4().hex[:12]}"
        try:
            execution = await client.run_job(job_id, options)
            if execution.get("id") is None:
                raise client.protocol_error("run answered without an execution id")
        except kit.SystemHTTPError as exc:
            if exc.status_code < 500:
                raise kit.SubmitRefused(f"{where} job {job_id}: {exc}") from exc
            _lost(f"{where} job {job_id}: run answered {exc}; outcome unknown", keys, exc)
        except (httpx.HTTPError, kit.SystemProtocolError) as exc:
            if not kit.may_have_arrived(exc):  # nothing was sent
                cannot = f"{where}: cannot connect ({kit.describe(exc)})"
                raise kit.BackendUnavailable(cannot) from exc
            _lost(f"{where} job {job_id}: {kit.describe(exc)}; outcome unknown", keys, exc)
        log.info("run %s: %s job %s is execution %s", job.run_id, where, job_id, execution["id"])
        return {**keys, "rundeckExecutionId": str(execution["id"])}

    # ------------------------------------------------------------------ follow

    async def _retry_of(self, client: RundeckClient, job_id: str, execution_id: str) -> str | None:
        for other in await client.job_executions(job_id):
            retried = other.get("retriedExecution")
            if isinstance(retried, dict) and str(retried.get("id")) == execution_id:
                return str(other.get("id"))
        return None

    async def status(self, keys: Mapping[str, str]) -> kit.StatusReport:
        with _following("rundeck"):
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
                    return kit.StatusReport(kit.BackendStatus.RUNNING, pending, url)
                execution_id = retry
        mapped = STATUSES.get(state)
        if mapped is kit.BackendStatus.QUEUED and execution_id != keys.get("rundeckExecutionId"):
            mapped = kit.BackendStatus.RUNNING  # a retry waiting to start: the run goes on
        ended = bool(execution.get("date-ended"))
        if mapped is None:  # "other": a custom status; anything unknown likewise
            custom = execution.get("customStatus") or state or "unknown"
            if not ended:
                return kit.StatusReport(kit.BackendStatus.RUNNING, f"status {custom}", url)
            return kit.StatusReport(
                kit.BackendStatus.FAILED,
                f"execution {execution_id} ended with status {custom}",
                url,
            )
        message: str | None = None
        if mapped in (kit.BackendStatus.FAILED, kit.BackendStatus.ABORTED):
            message = f"execution {execution_id}: {state}"
        return kit.StatusReport(mapped, message, url)

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        client, execution_id = await self._known(keys)
        with kit.following("rundeck abort", missing=()):
            answer = await client.abort(execution_id, force)
        abort = answer.get("abort") or {}
        if isinstance(abort, dict) and abort.get("status") == "failed":
            raise kit.BackendUnavailable(
                f"rundeck abort failed: {abort.get('reason') or 'no reason'}"
            )

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> kit.OutputChunk:
        client, execution_id = await self._known(keys)
        with _following("rundeck"):
            data = await client.output(execution_id, offset)
            next_offset = int(data.get("offset", offset))
        entries = data.get("entries") or []
        text = "".join(
            f"{e.get('log', '')}\n" for e in entries if isinstance(e, dict) and "log" in e
        )
        completed = bool(data.get("execCompleted", data.get("completed")))
        more = not (completed and data.get("completed", True))
        return kit.OutputChunk(text, next_offset, more)


def _following(what: str) -> Any:
    """The kit's :func:`~backends.kit.following`; a Rundeck answer without the fields it should
    have is a broken answer too."""
    return kit.following(what, also=(KeyError, ValueError, TypeError))


def _lost(message: str, keys: Mapping[str, str], cause: Exception) -> NoReturn:
    """The run request's outcome is unknown: with a run value the execution can be looked for."""
    if "rundeckRunValue" in keys:
        raise kit.SubmitUnknown(message, keys) from cause
    raise kit.OutcomeUnknown(message) from cause


def _carries(execution: Mapping[str, Any], option: str, value: str) -> bool:
    """Whether a Rundeck execution was run with ``option=value`` (its job options, or its
    argstring ``-option value``, the value quoted when it holds spaces)."""
    job = execution.get("job")
    options = job.get("options") if isinstance(job, Mapping) else None
    if isinstance(options, Mapping) and str(options.get(option, "")) == value:
        return True
    words = str(execution.get("argstring") or "").split()
    return any(flag == f"-{option}" and given.strip("\"'") == value for flag, given in pairs(words))
