"""Pure pieces of the Kubernetes backend: the configuration, the Job ASCOB creates for a run, and
the one table that reads a Job's status as an ASCOB status."""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backends.base import BackendStatus, Job, StatusReport
from backends.kit import RestInstance

__all__ = [
    "CONTAINER",
    "RUN_ANNOTATION",
    "STOP_ANNOTATION",
    "Instance",
    "Template",
    "build_job",
    "job_name",
    "job_report",
    "run_marker",
]

CONTAINER = "job"  # the name of the Job's one container
RUN_ANNOTATION = "ascob.io/run"  # "<runId>/<hash of the webhook id>": whose job this is
STOP_ANNOTATION = "ascob.io/stopped"  # set with spec.suspend by a clean stop
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # a C identifier, portable to every shell
RESERVED_ENV = ("ASCOB_RUN_ID", "ASCOB_WEBHOOK_ID")


def _positive(raw: Mapping[str, Any], key: str, where: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where}: {key} must be a non-negative integer, not {value!r}")
    return value


@dataclass(frozen=True)
class Template:
    name: str
    image: str
    command: tuple[str, ...]
    service_account: str | None
    backoff_limit: int | None
    active_deadline_seconds: int | None
    ttl_seconds_after_finished: int | None

    @classmethod
    def parse(cls, instance: str, name: str, raw: Any) -> Template:
        where = f"[kubernetes.{instance}.templates.{name}]"
        if not isinstance(raw, Mapping) or not raw.get("image"):
            raise ValueError(f"{where} needs an image")
        command = raw.get("command") or ()
        if isinstance(command, str):
            command = shlex.split(command)
        if not isinstance(command, list | tuple) or not all(isinstance(c, str) for c in command):
            raise ValueError(f"{where}: command must be a list of strings (or one string)")
        return cls(
            name=name,
            image=str(raw["image"]),
            command=tuple(command),
            service_account=str(raw["service_account"]) if raw.get("service_account") else None,
            backoff_limit=_positive(raw, "backoff_limit", where),
            active_deadline_seconds=_positive(raw, "active_deadline_seconds", where),
            ttl_seconds_after_finished=_positive(raw, "ttl_seconds_after_finished", where),
        )


@dataclass(frozen=True)
class Instance(RestInstance):
    kind = "kubernetes"
    namespace: str = "default"
    ca_file: str | None = None
    insecure: bool = False
    templates: Mapping[str, Template] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, raw: Any) -> Instance:
        common = cls.common(name, raw)
        templates = raw.get("templates") or {}
        if not isinstance(templates, Mapping):
            raise ValueError(f"[kubernetes.{name}.templates] must be a table of templates")
        return cls(
            **common,
            namespace=str(raw.get("namespace") or "default"),
            ca_file=str(raw["ca_file"]) if raw.get("ca_file") else None,
            insecure=bool(raw.get("insecure", False)),
            templates={t: Template.parse(name, t, v) for t, v in templates.items()},
        )


def run_marker(job: Job) -> str:
    """What names the ASCOB run on its Job: the run id and a short hash of its (secret, unique)
    webhook id, so that runs of two installations sharing a namespace never meet."""
    digest = hashlib.sha256(job.webhook_id.encode()).hexdigest()[:10]
    return f"{job.run_id}/{digest}"


def job_name(job: Job) -> str:
    """``ascob-<runId>-<hash>``: deterministic (a retried create names the same Job), DNS-1123,
    at most 63 characters (a Job's name is also a label value of its pods)."""
    run_id, digest = run_marker(job).split("/")
    return f"ascob-{run_id}-{digest}"[:63]


def invalid_env_names(parameters: Mapping[str, str]) -> list[str]:
    return [k for k in parameters if not ENV_NAME.match(k) or k in RESERVED_ENV]


def build_job(job: Job, template: Template) -> dict[str, Any]:
    """The batch/v1 Job of a run: one container, the parameters as its environment."""
    env = [{"name": k, "value": v} for k, v in job.parameters.items()]
    env += [
        {"name": "ASCOB_RUN_ID", "value": str(job.run_id)},
        {"name": "ASCOB_WEBHOOK_ID", "value": job.webhook_id},
    ]
    container: dict[str, Any] = {"name": CONTAINER, "image": template.image, "env": env}
    if template.command:
        container["command"] = list(template.command)
    labels = {"app.kubernetes.io/managed-by": "ascob", "ascob.io/run-id": str(job.run_id)}
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if template.service_account:
        pod_spec["serviceAccountName"] = template.service_account
    spec: dict[str, Any] = {
        "suspend": False,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    for key, value in (
        ("backoffLimit", template.backoff_limit),
        ("activeDeadlineSeconds", template.active_deadline_seconds),
        ("ttlSecondsAfterFinished", template.ttl_seconds_after_finished),
    ):
        if value is not None:
            spec[key] = value
    annotations = {RUN_ANNOTATION: run_marker(job), "ascob.io/template": template.name}
    if job.submitter:
        annotations["ascob.io/submitter"] = job.submitter[:200]
    if job.description:
        annotations["ascob.io/description"] = job.description[:1000]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(job), "labels": labels, "annotations": annotations},
        "spec": spec,
    }


def _count(status: Mapping[str, Any], key: str) -> int:
    value = status.get(key) or 0
    return value if isinstance(value, int) else 0


def job_report(job: Mapping[str, Any], url: str | None = None) -> StatusReport:
    """A Job's status as ASCOB reads it (first match wins):

    ==============================================  ==================
    condition ``Complete`` True                     SUCCEEDED
    condition ``Failed`` True (reason: message)     FAILED
    ``deletionTimestamp`` set (being deleted)       ABORTED
    ``spec.suspend`` by ASCOB, no pod active        ABORTED
    ``spec.suspend`` by ASCOB, pods terminating     RUNNING
    ``spec.suspend`` by someone else                QUEUED
    ``status.active`` > 0, or a pod has ended       RUNNING (a retry)
    otherwise (no pod started yet)                  QUEUED
    ==============================================  ==================
    """
    meta = job.get("metadata") or {}
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    conditions = {
        str(c.get("type")): c
        for c in status.get("conditions") or []
        if isinstance(c, Mapping) and c.get("status") == "True"
    }
    if "Complete" in conditions:
        return StatusReport(BackendStatus.SUCCEEDED, None, url)
    failed = conditions.get("Failed")
    if failed is not None:
        why = ": ".join(str(failed[k]) for k in ("reason", "message") if failed.get(k))
        return StatusReport(BackendStatus.FAILED, f"job failed ({why or 'no reason given'})", url)
    if meta.get("deletionTimestamp"):
        return StatusReport(BackendStatus.ABORTED, "job deleted (its pods are being removed)", url)
    active = _count(status, "active") + _count(status, "terminating")
    if spec.get("suspend") is True:
        if (meta.get("annotations") or {}).get(STOP_ANNOTATION):
            if active:
                return StatusReport(BackendStatus.RUNNING, f"stopping: {active} pod(s) left", url)
            return StatusReport(BackendStatus.ABORTED, "stopped by ASCOB (job suspended)", url)
        return StatusReport(BackendStatus.QUEUED, "job suspended (not by ASCOB)", url)
    if active or _count(status, "failed") or _count(status, "succeeded"):
        return StatusReport(BackendStatus.RUNNING, None, url)
    return StatusReport(BackendStatus.QUEUED, "no pod started yet", url)
