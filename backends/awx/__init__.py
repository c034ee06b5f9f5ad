"""``awxBackend``: launches an AWX / Ansible Automation Platform job or workflow template.

Configuration (section ``[awx.<instance>]`` of the ``ASCOB_CONFIG`` TOML file)::

    [awx.prod]
    url = "https://awx.example"
    token_env = "AWX_PROD_TOKEN"        # the OAuth2 / personal access token (sent as Bearer)
    # api_prefix = "/api/v2/"           # AAP 2.5+ through its gateway: "/api/controller/v2/"
    # timeout = 30                      # seconds per HTTP call
    # run_variable = "ascob_run"        # the correlation variable every launch carries

Labels: ``awx_instance`` (may be left out when one instance is configured) and either
``awx_job_template`` or ``awx_workflow_template``: a numeric id, or the template's exact name
(several templates of that name -> the submission fails and lists them). Job parameters become
``extra_vars``.

Every launch also carries ``ascob_run=<runId>-<nonce>``. It finds the job again when the launch
answer is lost (timeout, 5xx, a broken answer): ASCOB looks for the one recent job of the template
that carries it; none or several -> the dispatch outcome is unknown (IN_DOUBT), never launched
twice. AWX ignores extra_vars that a template does not prompt for (``ignored_fields`` of the
launch answer) yet still creates the job: ASCOB then cancels that job and fails the run saying so,
so that no parameter is silently dropped. A template that neither prompts for variables nor has a
survey is refused before anything is launched.

Status: new/pending/waiting -> QUEUED, running -> RUNNING, successful -> SUCCEEDED, failed/error ->
FAILED (with ``job_explanation``), canceled -> ABORTED. Stop is AWX's cancel; AWX has no forced
cancel, so a forced stop is the same cancel. Output: see :mod:`backends.awx.output`.

Identification keys: ``awxInstance``, ``awxKind`` (``job`` or ``workflow_job``), ``awxJobId``,
``awxTemplateId``, ``awxRunValue``.
"""

from __future__ import annotations

__all__ = ["STATUSES", "AwxBackend", "AwxClient"]

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import yaml

from backends import kit
from backends.awx.client import DEFAULT_API_PREFIX, AwxClient, normalize_prefix
from backends.awx.output import Checkpoints, job_text, workflow_text

log = logging.getLogger(__name__)

JOB_TEMPLATE_LABEL = "awx_job_template"
WORKFLOW_TEMPLATE_LABEL = "awx_workflow_template"
DEFAULT_RUN_VARIABLE = "ascob_run"

STATUSES = kit.statuses(
    queued=("new", "pending", "waiting"),
    running=("running",),
    succeeded=("successful",),
    failed=("failed", "error"),
    aborted=("canceled",),
)
_TEMPLATE_WORDS = {"job": "job template", "workflow_job": "workflow job template"}


@dataclass(frozen=True)
class Instance(kit.RestInstance):
    kind = "awx"
    api_prefix: str = DEFAULT_API_PREFIX
    run_variable: str = DEFAULT_RUN_VARIABLE

    @classmethod
    def parse(cls, name: str, raw: Any) -> Instance:
        common = cls.common(name, raw)
        return cls(
            **{**common, "url": common["url"].rstrip("/")},
            api_prefix=normalize_prefix(str(raw.get("api_prefix") or DEFAULT_API_PREFIX)),
            run_variable=str(raw.get("run_variable") or DEFAULT_RUN_VARIABLE),
        )

    def job_page(self, kind: str, job_id: int) -> str:
        """The job's page in the web UI (AAP's gateway UI, or AWX's)."""
        ui_kind = "workflow" if kind == "workflow_job" else "playbook"
        if self.api_prefix.startswith("/api/controller/"):
            return f"{self.url}/execution/jobs/{ui_kind}/{job_id}/output"
        return f"{self.url}/#/jobs/{ui_kind}/{job_id}/output"


@dataclass(frozen=True)
class Target:
    """A job's address: its instance, kind and id."""

    instance: Instance
    client: AwxClient
    kind: str
    job_id: int


def _extra_vars(job: Mapping[str, Any]) -> dict[str, Any]:
    raw = job.get("extra_vars")
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        data = yaml.safe_load(raw)  # AWX stores JSON (or YAML) text
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _job_id(answer: Mapping[str, Any]) -> int | None:
    for key in ("job", "workflow_job", "id"):
        value = answer.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class AwxBackend(kit.KitBackend[Instance, AwxClient]):
    id = "awxBackend"
    config_section = "awx"
    takes = (JOB_TEMPLATE_LABEL, WORKFLOW_TEMPLATE_LABEL)
    instance_type = Instance
    # After a lost launch answer: search the template's recent jobs now, then after these waits
    # (AWX may still be creating the job when the answer was lost).
    recovery_waits: ClassVar[tuple[float, ...]] = (1.0, 3.0)

    def setup(self) -> None:
        self._checkpoints = Checkpoints()

    def make_client(self, instance: Instance) -> AwxClient:
        url = instance.url + instance.api_prefix
        return AwxClient(url, instance.token(), timeout=instance.timeout, transport=self.transport)

    # ------------------------------------------------------------------ spec

    def _template(self, labels: Mapping[str, str]) -> tuple[str, str]:
        """(kind, id or name) of the template the labels name."""
        job, workflow = labels.get(JOB_TEMPLATE_LABEL), labels.get(WORKFLOW_TEMPLATE_LABEL)
        if job and workflow:
            raise kit.SpecRejected(
                f"give {JOB_TEMPLATE_LABEL} or {WORKFLOW_TEMPLATE_LABEL}, not both"
            )
        if job:
            return "job", job.strip()
        if workflow:
            return "workflow_job", workflow.strip()
        raise kit.SpecRejected(
            f"label {JOB_TEMPLATE_LABEL} or {WORKFLOW_TEMPLATE_LABEL} is required "
            "(a template id or its exact name)"
        )

    def validate(self, labels: Mapping[str, str]) -> None:
        super().validate(labels)
        self._template(labels)

    def _known(self, keys: Mapping[str, str]) -> Target:
        kind, job_id = kit.required(keys, "awxKind", "awxJobId")
        if not job_id.isdigit():
            raise kit.JobNotFound(f"awxJobId {job_id!r} is not a job id")
        instance, client = self.known(keys)
        return Target(instance, client, kind, int(job_id))

    # ------------------------------------------------------------------ submit

    async def _find_template(
        self, client: AwxClient, kind: str, wanted: str, where: str
    ) -> dict[str, Any]:
        word = _TEMPLATE_WORDS[kind]
        if wanted.isdigit():
            return await client.template(kind, int(wanted))
        found = await client.templates_named(kind, wanted)
        if not found:
            raise kit.SubmitRefused(f"{where}: no {word} named {wanted!r} (or no access to it)")
        if len(found) > 1:
            listed = ", ".join(
                f"id {t.get('id')} (organization "
                f"{(t.get('summary_fields') or {}).get('organization', {}).get('name', '?')})"
                for t in found
            )
            raise kit.SubmitRefused(
                f"{where}: {len(found)} {word}s are named {wanted!r}: {listed}; "
                "give the template id instead"
            )
        return found[0]

    async def submit(self, job: kit.Job) -> dict[str, str]:
        self.validate(job.labels)
        inst = self.instances.for_labels(job.labels)
        name = inst.name
        kind, wanted = self._template(job.labels)
        client = self.client(inst)
        where = f"awx {name!r}"
        word = _TEMPLATE_WORDS[kind]
        broken = (KeyError, TypeError, ValueError)
        with kit.before_sending(where, f"the {word}", f"no {word} {wanted}", also=broken):
            template = await self._find_template(client, kind, wanted, where)
            template_id = int(template["id"])
        where = f"awx {name!r} {word} {template_id} ({template.get('name', wanted)!r})"
        if template.get("ask_variables_on_launch") is False and not template.get("survey_enabled"):
            raise kit.SubmitRefused(
                f"{where} does not prompt for variables: AWX would ignore the job's parameters "
                f"and {inst.run_variable}; enable 'Prompt on launch' for Variables on the template"
            )
        run_value = f"{job.run_id}-{uuid.uuid4().hex[:12]}"
        extra_vars = {**dict(job.parameters), inst.run_variable: run_value}
        keys = {
            "awxInstance": name,
            "awxKind": kind,
            "awxTemplateId": str(template_id),
            "awxRunValue": run_value,
        }
        try:
            response = await client.launch(kind, template_id, extra_vars)
            answer = response.json()
            job_id = _job_id(answer) if isinstance(answer, dict) else None
            if job_id is None:
                raise client.protocol_error("the launch answer names no job")
        except kit.SystemHTTPError as exc:
            if exc.status_code < 500 and exc.status_code != 408:  # 408: a proxy gave up
                raise kit.SubmitRefused(f"{where}: launch refused, {exc}") from exc
            why = f"launch answered {exc}"
            return await self._recover(client, inst, keys, extra_vars, where, why)
        except (httpx.HTTPError, kit.SystemProtocolError, ValueError) as exc:
            if not kit.may_have_arrived(exc):
                raise kit.SubmitRefused(f"{where}: cannot connect ({kit.describe(exc)})") from exc
            why = f"launch: {kit.describe(exc)}"
            return await self._recover(client, inst, keys, extra_vars, where, why)
        kind = str(answer.get("type") or kind)  # a sliced job template launches a workflow job
        keys.update(awxKind=kind, awxJobId=str(job_id))
        ignored = answer.get("ignored_fields")
        if ignored:
            raise kit.SubmitRefused(await self._refuse_ignored(client, inst, kind, job_id, ignored))
        log.info("run %s: %s launched %s %s", job.run_id, where, kind, job_id)
        return keys

    async def _refuse_ignored(
        self, client: AwxClient, inst: Instance, kind: str, job_id: int, ignored: Any
    ) -> str:
        """Cancel the job AWX created although it ignored some of what we sent; say so."""
        if isinstance(ignored, dict):
            what = []
            for field, value in ignored.items():
                names = ", ".join(map(str, value)) if isinstance(value, dict) else ""
                what.append(f"{field} ({names})" if names else str(field))
            ignored_text = "; ".join(what)
        else:
            ignored_text = str(ignored)
        try:
            if await client.cancel(kind, job_id):
                outcome = f"ASCOB canceled AWX {kind} {job_id}, which AWX had already created"
            else:
                outcome = f"AWX had already created {kind} {job_id}, and it has already ended"
        except (kit.SystemHTTPError, httpx.HTTPError) as exc:
            outcome = (
                f"AWX had already created {kind} {job_id} and ASCOB could not cancel it "
                f"({kit.describe(exc)}): cancel it in AWX"
            )
        return (
            f"AWX ignored {ignored_text}: the template does not prompt for them. Enable 'Prompt "
            f"on launch' for Variables on the template (or add {inst.run_variable} and every "
            f"parameter to its survey). {outcome}."
        )

    async def _recover(
        self,
        client: AwxClient,
        inst: Instance,
        keys: dict[str, str],
        sent: Mapping[str, str],
        where: str,
        why: str,
    ) -> dict[str, str]:
        """The launch answer was lost: find the job by our correlation value, else IN_DOUBT.
        A found job that lacks some of the variables sent had them ignored: as at launch, it is
        canceled and the run fails."""
        kind, template_id, value = keys["awxKind"], int(keys["awxTemplateId"]), keys["awxRunValue"]
        log.warning("%s: %s; looking for the job carrying %s", where, why, value)
        problem = "no recent job of the template carries it"
        for wait in (0.0, *self.recovery_waits):
            await asyncio.sleep(wait)
            try:
                recent = await client.recent_jobs(kind, template_id)
            except kit.CALL_ERRORS as exc:
                problem = f"listing the template's jobs failed ({kit.describe(exc)})"
                continue
            mine = [j for j in recent if _extra_vars(j).get(inst.run_variable) == value]
            if len(mine) == 1 and _job_id(mine[0]) is not None:
                found = mine[0]
                job_kind, job_id = str(found.get("type") or kind), int(found["id"])
                log.warning("%s: found %s %s again by %s", where, job_kind, job_id, value)
                carried = _extra_vars(found)
                ignored = {
                    k: v
                    for k, v in sent.items()
                    if k not in carried or carried[k] not in (v, "$encrypted$")
                }
                if ignored:
                    raise kit.SubmitRefused(
                        await self._refuse_ignored(
                            client, inst, job_kind, job_id, {"extra_vars": ignored}
                        )
                    )
                return {**keys, "awxKind": job_kind, "awxJobId": str(job_id)}
            if len(mine) > 1:
                ids = ", ".join(str(j.get("id")) for j in mine)
                raise kit.OutcomeUnknown(
                    f"{where}: {why}; several jobs ({ids}) carry {inst.run_variable}={value}: "
                    "outcome unknown, not launched again"
                )
        raise kit.OutcomeUnknown(
            f"{where}: {why}; {problem} ({inst.run_variable}={value}): outcome unknown, "
            "not launched again"
        )

    # ------------------------------------------------------------------ follow

    async def status(self, keys: Mapping[str, str]) -> kit.StatusReport:
        target = self._known(keys)
        with kit.following(f"awx: {target.kind} {target.job_id}"):
            data = await target.client.unified_job(target.kind, target.job_id)
        state = data.get("status")
        mapped = STATUSES.get(str(state))
        if mapped is None:
            raise kit.BackendUnavailable(f"awx: {target.kind} {target.job_id} has status {state!r}")
        url = target.instance.job_page(target.kind, target.job_id)
        message: str | None = None
        if mapped in (kit.BackendStatus.FAILED, kit.BackendStatus.ABORTED):
            explanation = str(data.get("job_explanation") or "").strip()
            message = f"AWX {target.kind} {target.job_id}: {state}"
            if explanation:
                message += f": {explanation}"
        return kit.StatusReport(mapped, message, url)

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        # AWX has no forced cancel: a forced stop is the same cancel.
        target = self._known(keys)
        with kit.following("awx cancel", missing=()):
            await target.client.cancel(target.kind, target.job_id)

    # ------------------------------------------------------------------ output

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> kit.OutputChunk:
        target = self._known(keys)
        with kit.following("awx"):
            if target.kind == "workflow_job":
                text, complete = await workflow_text(target.client, target.job_id)
                data = text.encode()
                return kit.OutputChunk(
                    data[offset:].decode(errors="replace"), max(offset, len(data)), not complete
                )
            job = (target.instance.name, target.kind, target.job_id)
            at, line = self._checkpoints.best(job, offset)
            detail = await target.client.unified_job(target.kind, target.job_id)
            text, end_line, complete = await job_text(
                target.client, target.kind, target.job_id, detail, line
            )
        data = text.encode()
        end = at + len(data)
        self._checkpoints.remember(job, end, end_line)
        return kit.OutputChunk(
            data[max(0, offset - at) :].decode(errors="replace"), max(offset, end), not complete
        )
