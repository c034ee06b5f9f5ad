"""``gitlabBackend``: runs a GitLab CI/CD pipeline through the REST API v4.

Configuration (section ``[gitlab.<instance>]`` of the ``ASCOB_CONFIG`` TOML file)::

    [gitlab.main]
    url = "https://gitlab.example"
    token_env = "GITLAB_MAIN_TOKEN"  # an access token (scope ``api``), sent as PRIVATE-TOKEN
    # timeout = 30                   # seconds per HTTP call

Labels: ``gitlab_instance`` (may be left out when one instance is configured),
``gitlab_project`` (a numeric id or the ``group/sub/project`` path) and ``gitlab_ref`` (a branch
or tag; left out: the project's default branch). The spec's parameters become pipeline variables
(``POST /projects/:id/pipeline``), plus ``ASCOB_RUN=<runId>-<nonce>``, which finds the pipeline
again when the answer to the creation is lost: the newest API-triggered pipelines of the ref are
listed and the one whose name or variables carry that value is the run's. If none does, the
outcome is unknown and the run ends IN_DOUBT; the creation is never sent twice.

Identification keys: ``gitlabInstance``, ``gitlabProject``, ``gitlabRef``, ``gitlabPipelineId``,
``gitlabRunValue``.

Output: the jobs' logs in stage order, as one text that only grows (see
:mod:`backends.gitlab.trace`). Stop cancels the pipeline; a forced stop also force-cancels its
jobs that are still ``canceling`` (their runner did not confirm).
"""

from __future__ import annotations

__all__ = ["STATUSES", "GitLabBackend", "GitLabClient"]

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from backends import kit
from backends.gitlab.client import GitLabClient
from backends.gitlab.trace import (
    JOB_ENDED,
    LengthCache,
    clean_log,
    has_started,
    header,
    in_stage_order,
)

log = logging.getLogger(__name__)

PROJECT_LABEL = "gitlab_project"
REF_LABEL = "gitlab_ref"
RUN_VARIABLE = "ASCOB_RUN"

# GitLab pipeline status -> ASCOB. ``manual`` (blocked on a manual job) is RUNNING with a message.
STATUSES = kit.statuses(
    queued=("created", "waiting_for_resource", "preparing", "pending", "scheduled"),
    running=("running", "canceling", "manual"),
    succeeded=("success",),
    failed=("failed", "skipped"),
    aborted=("canceled",),
)
PIPELINE_ENDED = frozenset({"success", "failed", "canceled", "skipped"})
# When the answer to a creation is lost, look for the pipeline this many times, after these pauses
# (a proxy may give up while GitLab is still creating it).
LOST_ANSWER_LOOKUPS = (0.0, 1.0, 3.0)
_LOOKUP_WINDOW = 3600.0  # only pipelines created at most this long before the attempt


class Instance(kit.RestInstance):
    kind = "gitlab"


def _created_at(pipeline: Mapping[str, Any]) -> float | None:
    try:
        stamp = str(pipeline["created_at"]).replace("Z", "+00:00")
        return datetime.fromisoformat(stamp).timestamp()
    except (KeyError, ValueError):
        return None


class GitLabBackend(kit.KitBackend[Instance, GitLabClient]):
    id = "gitlabBackend"
    config_section = "gitlab"
    takes = (PROJECT_LABEL,)
    instance_type, client_type = Instance, GitLabClient

    def setup(self) -> None:
        self._lengths = LengthCache()

    # ------------------------------------------------------------------ spec

    def validate(self, labels: Mapping[str, str]) -> None:
        super().validate(labels)
        if not labels.get(PROJECT_LABEL, "").strip("/"):
            raise kit.SpecRejected(
                f"label {PROJECT_LABEL} is required (a project id, or its path as group/project)"
            )

    def _known(self, keys: Mapping[str, str]) -> tuple[GitLabClient, str, str]:
        project, pipeline_id = kit.required(keys, "gitlabProject", "gitlabPipelineId")
        return self.known(keys)[1], project, pipeline_id

    # ------------------------------------------------------------------ submit

    async def _ref(self, client: GitLabClient, project: str, labels: Mapping[str, str]) -> str:
        ref = labels.get(REF_LABEL, "").strip()
        if ref:
            return ref
        default = (await client.project(project)).get("default_branch")
        if not default:
            raise kit.SubmitRefused(
                f"gitlab project {project!r} has no default branch: set the label {REF_LABEL}"
            )
        return str(default)

    async def submit(self, job: kit.Job) -> dict[str, str]:
        self.validate(job.labels)
        name = self.instances.for_labels(job.labels).name
        project = job.labels[PROJECT_LABEL].strip("/")
        client = self.client(self.instances[name])
        where = f"gitlab {name!r} project {project!r}"
        with kit.before_sending(where, "the project"):
            ref = await self._ref(client, project, job.labels)
        where = f"{where} ref {ref!r}"
        if RUN_VARIABLE in job.parameters:
            log.warning("run %s: parameter %s is replaced by ASCOB's own", job.run_id, RUN_VARIABLE)
        run_value = f"{job.run_id}-{uuid.uuid4().hex[:12]}"
        variables = [{"key": k, "value": v} for k, v in job.parameters.items() if k != RUN_VARIABLE]
        variables.append({"key": RUN_VARIABLE, "value": run_value})
        keys = {
            "gitlabInstance": name,
            "gitlabProject": project,
            "gitlabRef": ref,
            "gitlabRunValue": run_value,
        }
        attempted = time.time()
        try:
            pipeline = await client.create_pipeline(project, ref, variables)
        except kit.SystemHTTPError as exc:
            if exc.status_code < 500:  # GitLab answered: no pipeline was created
                raise kit.SubmitRefused(f"{where}: {exc.message} (HTTP {exc.status_code})") from exc
            lost: Exception = exc
        except (httpx.HTTPError, kit.SystemProtocolError) as exc:
            if not kit.may_have_arrived(exc):
                raise kit.SubmitRefused(f"{where}: cannot connect ({kit.describe(exc)})") from exc
            lost = exc
        else:
            if str(pipeline.get("id", "")).isdigit():
                log.info("run %s: %s is pipeline %s", job.run_id, where, pipeline["id"])
                return {**keys, "gitlabPipelineId": str(pipeline["id"])}
            lost = client.protocol_error("the answer carries no pipeline id")
        log.warning(
            "run %s: %s: creation answered %s; looking for it",
            job.run_id,
            where,
            kit.describe(lost),
        )
        found = await self._find_by_run_value(client, project, ref, run_value, attempted)
        if found is not None:
            log.warning("run %s: %s: found pipeline %s by %s", job.run_id, where, found, run_value)
            return {**keys, "gitlabPipelineId": found}
        raise kit.OutcomeUnknown(
            f"{where}: the pipeline creation answered {kit.describe(lost)}, and no pipeline "
            f"carrying {RUN_VARIABLE}={run_value} was found; outcome unknown"
        )

    async def _find_by_run_value(
        self, client: GitLabClient, project: str, ref: str, run_value: str, attempted: float
    ) -> str | None:
        """The id of the API pipeline of ``ref`` named ``run_value`` or carrying it as a
        variable; None if none does (or GitLab cannot be asked)."""
        checked: set[str] = set()
        for pause in LOST_ANSWER_LOOKUPS:
            await asyncio.sleep(pause)
            try:
                pipelines = await client.recent_pipelines(project, ref)
                for pipeline in pipelines:
                    pid = str(pipeline.get("id", ""))
                    if not pid.isdigit() or pid in checked:
                        continue
                    if pipeline.get("name") == run_value:
                        return pid
                    created = _created_at(pipeline)
                    if created is not None and created < attempted - _LOOKUP_WINDOW:
                        continue
                    variables = await client.pipeline_variables(project, pid)
                    if any(
                        v.get("key") == RUN_VARIABLE and v.get("value") == run_value
                        for v in variables
                    ):
                        return pid
                    checked.add(pid)
            except kit.CALL_ERRORS as exc:
                log.warning("looking for the pipeline carrying %s failed: %s", run_value, exc)
        return None

    # ------------------------------------------------------------------ follow

    async def _pipeline(self, keys: Mapping[str, str]) -> dict[str, Any]:
        client, project, pipeline_id = self._known(keys)
        with kit.following(f"gitlab pipeline {pipeline_id}"):
            return await client.pipeline(project, pipeline_id)

    async def _failed_jobs(self, keys: Mapping[str, str]) -> str:
        """`` (failed jobs: a, b)`` for a failed pipeline's message; empty if unknown."""
        client, project, pipeline_id = self._known(keys)
        try:
            jobs = await client.pipeline_jobs(project, pipeline_id)
        except Exception as exc:  # cosmetic: the status is known already
            log.debug("gitlab pipeline %s: no job list for the message: %r", pipeline_id, exc)
            return ""
        failed = [
            f"{j.get('name')}" + (f" ({j['failure_reason']})" if j.get("failure_reason") else "")
            for j in in_stage_order(jobs)
            if j.get("status") == "failed" and not j.get("allow_failure")
        ]
        return f" (failed jobs: {', '.join(failed)})" if failed else ""

    async def status(self, keys: Mapping[str, str]) -> kit.StatusReport:
        pipeline = await self._pipeline(keys)
        pipeline_id = keys["gitlabPipelineId"]
        state, url = pipeline.get("status"), pipeline.get("web_url")
        mapped = STATUSES.get(state) if isinstance(state, str) else None
        if mapped is None:
            if pipeline.get("finished_at"):
                message = f"pipeline #{pipeline_id} ended with status {state!r}, unknown to ASCOB"
                return kit.StatusReport(kit.BackendStatus.FAILED, message, url)
            raise kit.BackendUnavailable(
                f"gitlab pipeline {pipeline_id}: status {state!r} is unknown to ASCOB"
            )
        if state == "manual":
            return kit.StatusReport(mapped, "waiting for a manual action", url)
        if mapped is kit.BackendStatus.SUCCEEDED:
            detail = pipeline.get("detailed_status")
            warned = isinstance(detail, dict) and detail.get("group") == "success-with-warnings"
            return kit.StatusReport(mapped, "passed with warnings" if warned else None, url)
        if mapped is kit.BackendStatus.FAILED:
            if pipeline.get("yaml_errors"):  # a pipeline created failed, without jobs
                why = f" (configuration error: {pipeline['yaml_errors']})"
            else:
                why = await self._failed_jobs(keys) if state == "failed" else ""
            return kit.StatusReport(mapped, f"pipeline #{pipeline_id} {state}{why}", url)
        if mapped is kit.BackendStatus.ABORTED:
            return kit.StatusReport(mapped, f"pipeline #{pipeline_id} canceled", url)
        return kit.StatusReport(mapped, str(state) if state != "running" else None, url)

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        client, project, pipeline_id = self._known(keys)
        with kit.following(f"gitlab cancel {pipeline_id}"):
            await client.cancel_pipeline(project, pipeline_id)
            if force:
                await self._force_cancel_jobs(client, project, pipeline_id)

    async def _force_cancel_jobs(
        self, client: GitLabClient, project: str, pipeline_id: str
    ) -> None:
        """After the pipeline's cancel: jobs still running are cancelled, and jobs left
        ``canceling`` (the runner has not confirmed) are force-cancelled."""
        for job in await client.pipeline_jobs(project, pipeline_id):
            job_id, state = str(job.get("id", "")), job.get("status")
            if not job_id.isdigit() or state not in ("running", "canceling"):
                continue
            try:
                if state == "running":
                    state = (await client.cancel_job(project, job_id)).get("status")
                if state == "canceling":
                    await client.cancel_job(project, job_id, force=True)
            except kit.SystemHTTPError as exc:
                if exc.status_code >= 500:
                    raise
                # ended meanwhile (422), or the token may not force-cancel (403): say so, go on
                log.warning(
                    "gitlab pipeline %s: force-cancel of job %s: %s", pipeline_id, job_id, exc
                )

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> kit.OutputChunk:
        client, project, pipeline_id = self._known(keys)
        pipeline = await self._pipeline(keys)
        ended = pipeline.get("status") in PIPELINE_ENDED
        with kit.following(f"gitlab output {pipeline_id}"):
            jobs = in_stage_order(await client.pipeline_jobs(project, pipeline_id))
            pieces, position, blocked = [], 0, False
            for job in jobs:
                job_id, settled = str(job["id"]), job.get("status") in JOB_ENDED
                if not has_started(job):
                    if settled or ended:
                        continue  # never ran: adds nothing
                    blocked = True  # may still start: nothing after it is stable yet
                    break
                cache_key = (keys["gitlabInstance"], project, job_id)
                known = self._lengths.get(cache_key) if settled else None
                if known is not None and position + known <= offset:
                    position += known
                    continue
                piece = header(job) + clean_log(await client.trace(project, job_id), settled)
                if settled:
                    self._lengths.put(cache_key, len(piece))
                if position + len(piece) > offset:
                    pieces.append(piece[max(0, offset - position) :])
                position += len(piece)
                if not settled:
                    blocked = True  # its log may still grow
                    break
        text = b"".join(pieces).decode("utf-8", errors="replace")
        return kit.OutputChunk(text, max(offset, position), blocked or not ended)
