"""``jenkinsBackend``: runs a Jenkins job through its remote access API.

Configuration (section ``[jenkins.<instance>]`` of the ``ASCOB_CONFIG`` TOML file)::

    [jenkins.ci]
    url = "https://jenkins.example"
    user = "ascob"
    token_env = "JENKINS_CI_TOKEN"   # the API token is read from this environment variable
    # timeout = 30                   # seconds per HTTP call
    # run_parameter = "ASCOB_RUN"    # the unique parameter of the strong path (see below)
    # require_run_parameter = false  # true: refuse jobs that do not declare it
    # merge_wait = 600               # seconds a merged trigger waits before it is refused

Labels: ``jenkins_instance`` (may be left out when one instance is configured) and
``jenkins_project_name`` (folders as ``a/b``). Job parameters become build parameters.

Any job runs as it is. Two paths, chosen per job from its parameter definitions:

- **Strong** (the job declares the string parameter ``ASCOB_RUN``): each trigger carries
  ``ASCOB_RUN=<runId>-<nonce>``, so Jenkins never merges two ASCOB runs into one build, and the
  same value finds the build again once Jenkins has forgotten the queue item.
- **As it is** (no such parameter): ``buildWithParameters`` with the spec's parameters, or a
  plain ``build`` for a job without parameters (given parameters, it is refused: Jenkins would
  drop them). Jenkins merges a trigger into an identical request still waiting in its queue and
  answers with that item. A trigger that comes back with an item that was already in the queue
  just before it (looked up in ``/queue/api/json``) or that another ASCOB run of this process got
  (:mod:`backends.jenkins.claims`) was merged: the run waits until the item has left the queue
  and triggers again (at most ``merge_wait`` seconds, then refused: nothing ran for this run).
  The build is found again by its ``queueId`` once Jenkins has forgotten the queue item.

Identification keys: ``jenkinsInstance``, ``jenkinsProject``, ``jenkinsQueueId``,
``jenkinsRunValue`` (strong path only), ``jenkinsRetriggered`` (a merged trigger was repeated:
what happened, shown in the status message) and, when a webhook reports it,
``jenkinsBuildNumber``.
"""

from __future__ import annotations

__all__ = ["JenkinsBackend", "JenkinsClient"]

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from backends import kit
from backends.jenkins.claims import CLAIMS, QueueClaims
from backends.jenkins.client import JenkinsClient
from backends.jenkins.triggering import AsIs, declared_parameters, has_left_queue, trigger

log = logging.getLogger(__name__)

PROJECT_LABEL = "jenkins_project_name"
DEFAULT_RUN_PARAMETER = "ASCOB_RUN"

RESULTS = kit.statuses(
    succeeded=("SUCCESS",),
    failed=("FAILURE", "UNSTABLE", "NOT_BUILT"),
    aborted=("ABORTED",),
)


@dataclass(frozen=True)
class Instance(kit.RestInstance):
    kind = "jenkins"
    user: str | None = None
    run_parameter: str = DEFAULT_RUN_PARAMETER
    require_run_parameter: bool = False
    merge_wait: float = 600.0

    @classmethod
    def parse(cls, name: str, raw: Any) -> Instance:
        common = cls.common(name, raw)
        if not isinstance(raw.get("require_run_parameter", False), bool):
            raise ValueError(f"[jenkins.{name}] require_run_parameter must be true or false")
        return cls(
            **common,
            user=str(raw["user"]) if raw.get("user") else None,
            run_parameter=str(raw.get("run_parameter", DEFAULT_RUN_PARAMETER)),
            require_run_parameter=raw.get("require_run_parameter", False),
            merge_wait=float(raw.get("merge_wait", 600.0)),
        )


def with_note(message: str, keys: Mapping[str, str]) -> str:
    """The status message, with what happened to a merged trigger (if one was)."""
    note = keys.get("jenkinsRetriggered")
    return f"{message}; {note}" if note else message


class JenkinsBackend(kit.KitBackend[Instance, JenkinsClient]):
    id = "jenkinsBackend"
    config_section = "jenkins"
    takes = (PROJECT_LABEL,)
    instance_type = Instance

    def setup(self) -> None:
        self._builds: dict[tuple[str, str], int] = {}  # (instance, queue id) -> build number
        self._claims: QueueClaims = CLAIMS

    # ------------------------------------------------------------------ spec

    def make_client(self, instance: Instance) -> JenkinsClient:
        token, user = instance.token(), instance.user
        auth = httpx.BasicAuth(user, token or "") if user else None
        return JenkinsClient(
            instance.url, auth=auth, timeout=instance.timeout, transport=self.transport
        )

    def validate(self, labels: Mapping[str, str]) -> None:
        super().validate(labels)
        project = labels.get(PROJECT_LABEL, "").strip("/")
        if not project:
            raise kit.SpecRejected(f"label {PROJECT_LABEL} is required (folders as a/b)")

    def _known(self, keys: Mapping[str, str]) -> tuple[Instance, JenkinsClient, str]:
        (project,) = kit.required(keys, "jenkinsProject")
        return *self.known(keys), project

    # ------------------------------------------------------------------ submit

    async def submit(self, job: kit.Job) -> dict[str, str]:
        self.validate(job.labels)
        inst = self.instances.for_labels(job.labels)
        name = inst.name
        project = job.labels[PROJECT_LABEL].strip("/")
        client = self.client(inst)
        where = f"jenkins {name!r} job {project!r}"
        with kit.before_sending(where, "the job", "no such job"):
            definition = await client.get_job(project)
            await client.ensure_crumb()
        if definition.get("buildable") is False:
            raise kit.SubmitRefused(f"{where}: the job is disabled")
        parameterized, declared = declared_parameters(definition)
        if inst.run_parameter in declared:
            return await self._submit_with_run_value(job, inst, client, project, where)
        if inst.require_run_parameter:
            raise kit.SubmitRefused(
                f"{where} does not declare the string parameter {inst.run_parameter}, which "
                f"[jenkins.{name}] requires (require_run_parameter): add it to the job"
            )
        if not parameterized and job.parameters:
            raise kit.SubmitRefused(
                f"{where} takes no parameters, so Jenkins would drop "
                f"{', '.join(sorted(job.parameters))}: remove them from the spec, or declare "
                "them in the job (This project is parameterized)"
            )
        return await self._submit_as_is(
            job, inst, client, project, where, dict(job.parameters) if parameterized else None
        )

    async def _submit_with_run_value(
        self, job: kit.Job, inst: Instance, client: JenkinsClient, project: str, where: str
    ) -> dict[str, str]:
        """The strong path: a unique value in the run parameter; Jenkins never merges it."""
        run_value = f"{job.run_id}-{uuid.uuid4().hex[:12]}"
        parameters = {**dict(job.parameters), inst.run_parameter: run_value}
        keys = {"jenkinsInstance": inst.name, "jenkinsProject": project}
        keys["jenkinsRunValue"] = run_value
        try:
            queue_id = await trigger(client, project, where, parameters)
        except kit.SubmitRefused:
            raise
        except Exception as exc:
            # Jenkins may have queued it: the build that carries run_value is ours
            raise kit.SubmitUnknown(f"{where}: {kit.describe(exc)}", keys) from exc
        log.info("run %s: %s queued as item %s", job.run_id, where, queue_id)
        return {**keys, "jenkinsQueueId": str(queue_id)}

    async def _submit_as_is(
        self,
        job: kit.Job,
        inst: Instance,
        client: JenkinsClient,
        project: str,
        where: str,
        parameters: dict[str, str] | None,
    ) -> dict[str, str]:
        """A job without the run parameter, triggered as it is (merges undone: see
        :mod:`backends.jenkins.triggering`)."""
        sender = AsIs(
            client=client,
            claims=self._claims,
            server=inst.url,
            project=project,
            where=where,
            parameters=parameters,
            run_id=job.run_id,
            run_parameter=inst.run_parameter,
            merge_wait=inst.merge_wait,
        )
        queue_id, note = await sender.send()
        log.info(
            "run %s: %s queued as item %s (no %s parameter: triggered as it is)",
            job.run_id,
            where,
            queue_id,
            inst.run_parameter,
        )
        keys = {"jenkinsInstance": inst.name, "jenkinsProject": project}
        keys["jenkinsQueueId"] = str(queue_id)
        if note:
            keys["jenkinsRetriggered"] = note
        return keys

    # ------------------------------------------------------------------ follow

    async def _build_number(self, keys: Mapping[str, str]) -> int | kit.StatusReport:
        """The build number, or a report while the job waits in the queue (or left it)."""
        inst, client, project = self._known(keys)
        if keys.get("jenkinsBuildNumber", "").isdigit():
            return int(keys["jenkinsBuildNumber"])
        queue_id = keys.get("jenkinsQueueId", "")
        value = keys.get("jenkinsRunValue")
        # the cache's key: the queue item, or the run value when the trigger's answer was lost
        cache_key = (inst.name, queue_id or f"value:{value}")
        cached = self._builds.get(cache_key)
        if cached is not None:
            return cached
        if not queue_id and value is not None:
            wanted = f"\n{inst.run_parameter}={value}"
            for waiting in await client.queue_items():
                if wanted in f"{waiting.get('params') or ''}\n":
                    why = str(waiting.get("why") or "queued")
                    return kit.StatusReport(kit.BackendStatus.QUEUED, with_note(why, keys))
        item = await client.queue_item(int(queue_id)) if queue_id.isdigit() else None
        if queue_id.isdigit() and (item is None or has_left_queue(item)):
            self._claims.release(inst.url, int(queue_id))  # it can absorb no more triggers
        if item is not None:
            if item.get("cancelled"):
                return kit.StatusReport(
                    kit.BackendStatus.ABORTED, "cancelled while in the Jenkins queue"
                )
            executable = item.get("executable")
            if isinstance(executable, dict) and executable.get("number") is not None:
                number = int(executable["number"])
                self._builds[cache_key] = number
                return number
            return kit.StatusReport(
                kit.BackendStatus.QUEUED, with_note(str(item.get("why") or "queued"), keys)
            )
        # Jenkins forgets left queue items after a few minutes (and a trigger whose answer was
        # lost has none): find the build by our value, or (a job triggered as it is) by the
        # queue item it came from.
        for build in await client.recent_builds(project):
            if value is None:
                mine = str(build.get("queueId")) == queue_id
            else:
                mine = any(
                    param.get("name") == inst.run_parameter and param.get("value") == value
                    for action in build.get("actions") or []
                    for param in (action or {}).get("parameters") or []
                )
            if mine:
                number = int(build["number"])
                self._builds[cache_key] = number
                return number
        wanted = f"carries {value}" if value else f"came from it (queueId {queue_id})"
        raise kit.JobNotFound(
            f"jenkins queue item {queue_id} is gone and none of the last 100 builds {wanted}"
        )

    async def status(self, keys: Mapping[str, str]) -> kit.StatusReport:
        with kit.following("jenkins"):
            found = await self._build_number(keys)
            if isinstance(found, kit.StatusReport):
                return found
            _, client, project = self._known(keys)
            build = await client.get_build(project, found)
        url = build.get("url")
        result = build.get("result")
        if build.get("building") or result is None:
            return kit.StatusReport(
                kit.BackendStatus.RUNNING, with_note(f"build #{found}", keys), url
            )
        mapped = RESULTS.get(str(result))
        if mapped is None:
            unknown = f"build #{found}: unknown result {result}"
            return kit.StatusReport(kit.BackendStatus.FAILED, with_note(unknown, keys), url)
        if mapped is kit.BackendStatus.SUCCEEDED:
            note = keys.get("jenkinsRetriggered")
            return kit.StatusReport(mapped, f"build #{found}; {note}" if note else None, url)
        return kit.StatusReport(mapped, with_note(f"build #{found}: {result}", keys), url)

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        with kit.following("jenkins stop", missing=()):
            found = await self._build_number(keys)
            _, client, project = self._known(keys)
            if isinstance(found, kit.StatusReport):
                if found.status is kit.BackendStatus.QUEUED:
                    await client.cancel_queue_item(int(keys["jenkinsQueueId"]))
                    # it may have left the queue meanwhile: stop the build too
                    found = await self._build_number(keys)
                if isinstance(found, kit.StatusReport):
                    return
            if not force:
                await client.build_action(project, found, "stop")
                return
            # force: terminate, then kill; builds that offer neither are stopped
            if not await client.build_action(project, found, "term"):
                await client.build_action(project, found, "stop")
            await client.build_action(project, found, "kill")

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> kit.OutputChunk:
        with kit.following("jenkins"):
            found = await self._build_number(keys)
            if isinstance(found, kit.StatusReport):
                return kit.OutputChunk("", offset, not found.status.is_final)
            _, client, project = self._known(keys)
            text, next_offset, more = await client.progressive_text(project, found, offset)
        return kit.OutputChunk(text, next_offset, more)
