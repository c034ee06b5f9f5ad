"""``jobsBackend``: a complete backend for a small REST job service, built on the backend kit.

It is the example of docs/backends.md ("Writing a backend"), which shows this file whole; the
contract suite runs it against the job service of tests/fakes/fake_http_service.py. The service:
``POST /jobs`` ``{"task", "ref", "params"}`` -> ``{"job": {"id", "status"}}``; ``GET /jobs/{id}``
-> ``{"job": {"status", "error"}}``; ``GET /jobs/{id}/log?offset=N``; ``POST
/jobs/{id}/cancel[?force=1]`` (409: the job is over already).

Configuration::

    [jobs.main]
    url = "https://jobs.example"
    token_env = "JOBS_MAIN_TOKEN"  # sent as Authorization: Bearer
    # timeout = 30

Labels: ``jobs_task``, ``jobs_instance`` (may be left out with one instance). Parameters become
the job's ``params``. Identification keys: ``jobsInstance``, ``jobsJobId``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from backends import kit

TASK_LABEL = "jobs_task"
STATUSES = kit.statuses(
    queued=("waiting",),
    running=("working",),
    succeeded=("ok",),
    failed=("error",),
    aborted=("cancelled", "killed"),
)


class Instance(kit.RestInstance):  # url, token_env, timeout
    kind = "jobs"


class JobsClient(kit.ApiClient):
    """The service's API; its errors are the kit's, named ``jobs``."""

    system = "jobs"

    async def start(self, task: str, ref: str, params: dict[str, str]) -> dict[str, Any]:
        body = {"task": task, "ref": ref, "params": params}
        return await self.object("POST", "jobs", json=body)

    async def job(self, job_id: str) -> dict[str, Any]:
        data = await self.object("GET", f"jobs/{quote(job_id, safe='')}")
        if not isinstance(data.get("job"), dict):
            raise self.protocol_error(f"job {job_id}: the answer has no job")
        return dict(data["job"])

    async def log(self, job_id: str, offset: int) -> str:
        path = f"jobs/{quote(job_id, safe='')}/log"
        return (await self.send("GET", path, params={"offset": str(offset)})).text

    async def cancel(self, job_id: str, force: bool) -> None:
        params = {"force": "1"} if force else None
        await self.send("POST", f"jobs/{quote(job_id, safe='')}/cancel", params=params)


class JobsBackend(kit.KitBackend[Instance, JobsClient]):
    id = "jobsBackend"
    config_section = "jobs"
    takes = (TASK_LABEL,)
    instance_type, client_type = Instance, JobsClient

    def validate(self, labels: Mapping[str, str]) -> None:
        super().validate(labels)  # the instance label
        if not labels.get(TASK_LABEL):
            raise kit.SpecRejected(f"label {TASK_LABEL} is required")

    async def submit(self, job: kit.Job) -> dict[str, str]:
        self.validate(job.labels)
        instance = self.instances.for_labels(job.labels)
        client = self.client(instance)
        where = f"jobs {instance.name!r}"
        task, params = job.labels[TASK_LABEL], dict(job.parameters)
        try:
            answer = await client.start(task, str(job.run_id), params)
        except kit.SystemHTTPError as exc:
            if exc.status_code < 500:  # the service answered: it made no job
                raise kit.SubmitRefused(f"{where}: {exc}") from exc
            raise kit.OutcomeUnknown(f"{where}: the start answered {exc}") from exc
        except kit.CALL_ERRORS as exc:
            if not kit.may_have_arrived(exc):  # nothing was sent: ASCOB sends it again later
                raise kit.BackendUnavailable(f"{where}: {kit.describe(exc)}") from exc
            raise kit.OutcomeUnknown(f"{where}: the start got {kit.describe(exc)}") from exc
        job_id = (answer.get("job") or {}).get("id")
        if not job_id:
            raise kit.OutcomeUnknown(f"{where}: the start's answer names no job")
        return {"jobsInstance": instance.name, "jobsJobId": str(job_id)}

    async def status(self, keys: Mapping[str, str]) -> kit.StatusReport:
        (job_id,) = kit.required(keys, "jobsJobId")
        _, client = self.known(keys)
        with kit.following(f"jobs job {job_id}"):  # 404: JobNotFound; else BackendUnavailable
            data = await client.job(job_id)
        mapped = STATUSES.get(str(data.get("status")))
        if mapped is None:  # not an answer yet: polling goes on
            raise kit.BackendUnavailable(f"jobs job {job_id}: status {data.get('status')!r}")
        failed = mapped is kit.BackendStatus.FAILED
        return kit.StatusReport(mapped, str(data.get("error")) if failed else None)

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> kit.OutputChunk:
        final = (await self.status(keys)).status.is_final  # first: then the log read is whole
        (job_id,) = kit.required(keys, "jobsJobId")
        _, client = self.known(keys)
        with kit.following(f"jobs log of {job_id}"):
            text = await client.log(job_id, offset)
        return kit.OutputChunk(text, offset + len(text.encode()), not final)

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        (job_id,) = kit.required(keys, "jobsJobId")
        _, client = self.known(keys)
        with kit.following(f"jobs stop of {job_id}", missing=()):
            try:
                await client.cancel(job_id, force)
            except kit.SystemHTTPError as exc:
                if exc.status_code != 409:  # 409: over already, nothing to stop
                    raise
