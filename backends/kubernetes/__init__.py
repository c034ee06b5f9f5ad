"""``kubernetesBackend``: runs a run as a Kubernetes ``batch/v1`` Job, through the REST API.

Configuration (section ``[kubernetes.<instance>]`` of the ``ASCOB_CONFIG`` TOML file)::

    [kubernetes.prod]
    url = "https://k8s.example:6443"
    token_env = "K8S_PROD_TOKEN"      # a bearer token (service account) read from this variable
    namespace = "ascob-jobs"          # default "default"
    ca_file = "/etc/ascob/k8s-ca.pem" # or: insecure = true (no TLS verification)
    # timeout = 30                    # seconds per HTTP call

    [kubernetes.prod.templates.report]
    image = "registry.example/report:1.4"
    command = ["python", "-m", "report"]   # or one string, split like a shell would
    # service_account = "reporter"
    # backoff_limit = 0                    # retries (Kubernetes' default: 6)
    # active_deadline_seconds = 3600
    # ttl_seconds_after_finished = 86400

Labels: ``kubernetes_template`` (required), ``kubernetes_instance`` (may be left out when one
instance is configured). Parameters become environment variables of the container (names must be
C identifiers), plus ``ASCOB_RUN_ID`` and ``ASCOB_WEBHOOK_ID``.

The Job is named ``ascob-<runId>-<hash of the webhook id>`` and annotated ``ascob.io/run``: a
create whose answer was lost is sent again, and 409 AlreadyExists with this run's annotation is
the same Job, so a run is never IN_DOUBT for a lost answer, and never created twice.

Identification keys: ``kubernetesInstance``, ``kubernetesNamespace``, ``kubernetesJobName``,
``kubernetesJobUid`` (a Job re-created under the same name is not this run's).

Stop: clean = ``spec.suspend: true`` (merge patch; Kubernetes deletes the pods; ABORTED once none
is active); forced = DELETE with ``propagationPolicy=Foreground`` (never without a policy: Jobs
orphan their pods by default). A Job deleted by a forced stop reads ABORTED; once gone, the Job's
uid is remembered (in memory and under the backend's data directory) so that its 404 also reads
ABORTED.

The client raises the kit's errors (:mod:`backends.kit.errors`); a ``SystemHTTPError`` carries
the Status object's ``reason`` and ``message``.
"""

from __future__ import annotations

__all__ = ["InvalidParameters", "KubernetesBackend", "KubernetesClient"]

import asyncio
import logging
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from backends import kit
from backends.kubernetes.client import KubernetesClient, tls_verify
from backends.kubernetes.jobs import (
    RUN_ANNOTATION,
    STOP_ANNOTATION,
    Instance,
    build_job,
    invalid_env_names,
    job_name,
    job_report,
    run_marker,
)
from backends.kubernetes.logs import CursorStore, read_on

log = logging.getLogger(__name__)

TEMPLATE_LABEL = "kubernetes_template"
CREATE_ATTEMPTS = 4
CREATE_BACKOFF = 0.5  # seconds before the 2nd attempt, doubled each time
_ANSWER_ERRORS = (httpx.HTTPError, kit.SystemProtocolError, ValueError)


class InvalidParameters(kit.SpecRejected, kit.SubmitRefused):
    """Parameters that cannot be environment variables: the spec is wrong (SpecRejected), and the
    Job was certainly not created (SubmitRefused: the run FAILS with this message)."""


@dataclass(frozen=True)
class Ref:
    """The Job that identification keys name."""

    instance: str
    namespace: str
    name: str
    uid: str


class KubernetesBackend(kit.KitBackend[Instance, KubernetesClient]):
    id = "kubernetesBackend"
    config_section = "kubernetes"
    takes = (TEMPLATE_LABEL,)
    instance_type = Instance

    def setup(self) -> None:
        self._lock = threading.Lock()
        self._cursors: CursorStore[Ref] = CursorStore()
        self._deleted: set[str] = set()

    # ------------------------------------------------------------------ spec

    def make_client(self, instance: Instance) -> KubernetesClient:
        token = instance.token()
        try:
            verify = tls_verify(instance.ca_file, instance.insecure)
        except (OSError, ssl.SSLError) as exc:
            raise kit.SubmitRefused(
                f"kubernetes instance {instance.name!r}: cannot use ca_file {instance.ca_file} "
                f"({kit.describe(exc)})"
            ) from exc
        return KubernetesClient(
            instance.url, token, timeout=instance.timeout, verify=verify, transport=self.transport
        )

    def validate(self, labels: Mapping[str, str]) -> None:
        inst = self.instances.for_labels(labels)
        template = labels.get(TEMPLATE_LABEL)
        if not template:
            raise kit.SpecRejected(f"label {TEMPLATE_LABEL} is required")
        if template not in inst.templates:
            known = ", ".join(sorted(inst.templates)) or "none"
            raise kit.SpecRejected(
                f"{TEMPLATE_LABEL}={template!r} is not a template of kubernetes instance "
                f"{inst.name!r} (templates: {known}; see [kubernetes.{inst.name}.templates.<name>])"
            )

    def _known(self, keys: Mapping[str, str]) -> tuple[KubernetesClient, Ref]:
        namespace, name = kit.required(keys, "kubernetesNamespace", "kubernetesJobName")
        instance, client = self.known(keys)
        return client, Ref(instance.name, namespace, name, keys.get("kubernetesJobUid", ""))

    # ------------------------------------------------------------------ submit

    async def submit(self, job: kit.Job) -> dict[str, str]:
        self.validate(job.labels)
        inst = self.instances.for_labels(job.labels)
        template = inst.templates[job.labels[TEMPLATE_LABEL]]
        bad = invalid_env_names(job.parameters)
        if bad:
            raise InvalidParameters(
                f"parameters {', '.join(map(repr, bad))} cannot be environment variables of the "
                "container: a name is letters, digits and _, not starting with a digit "
                "(ASCOB_RUN_ID and ASCOB_WEBHOOK_ID are set by ASCOB)"
            )
        client = self.client(inst)
        body = build_job(job, template)
        name, ns = job_name(job), inst.namespace
        where = f"kubernetes {inst.name!r} namespace {ns!r}"
        connect_only, last = True, "no attempt"
        for attempt in range(CREATE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(CREATE_BACKOFF * 2 ** (attempt - 1))
            try:
                created = await client.create_job(ns, body)
            except kit.SystemHTTPError as exc:
                if exc.status_code == 409 and exc.reason == "AlreadyExists":
                    found = await self._existing(client, ns, name, job, where)
                    if found is not None:
                        created = found
                        break
                    connect_only, last = False, f"{exc}; the Job could not be read back"
                    continue
                if exc.status_code < 500 and exc.status_code != 429:
                    raise kit.SubmitRefused(f"{where}: {exc}") from exc
                connect_only, last = False, str(exc)
                continue
            except _ANSWER_ERRORS as exc:
                connect_only = connect_only and not kit.may_have_arrived(exc)
                last = kit.describe(exc)
                continue
            break
        else:
            if connect_only:
                raise kit.SubmitRefused(f"{where}: cannot connect ({last})")
            raise kit.OutcomeUnknown(
                f"{where}: creating Job {name} failed {CREATE_ATTEMPTS} times ({last}); "
                "outcome unknown"
            )
        uid = str((created.get("metadata") or {}).get("uid") or "")
        log.info("run %s: %s Job %s (uid %s) created", job.run_id, where, name, uid)
        return {
            "kubernetesInstance": inst.name,
            "kubernetesNamespace": ns,
            "kubernetesJobName": name,
            "kubernetesJobUid": uid,
        }

    async def _existing(
        self, client: KubernetesClient, ns: str, name: str, job: kit.Job, where: str
    ) -> dict[str, Any] | None:
        """The Job a 409 names: this run's (created by an earlier attempt whose answer was
        lost), None if it cannot be read now; SubmitRefused if it belongs to something else."""
        try:
            existing = await client.get_job(ns, name)
        except (kit.SystemHTTPError, *_ANSWER_ERRORS):
            return None
        marker = ((existing.get("metadata") or {}).get("annotations") or {}).get(RUN_ANNOTATION)
        if marker != run_marker(job):
            raise kit.SubmitRefused(
                f"{where}: a Job named {name} already exists and is not this run's "
                f"(annotation {RUN_ANNOTATION}={marker!r})"
            )
        log.info(
            "run %s: Job %s existed already (an earlier create was answered late)", job.run_id, name
        )
        return existing

    # ------------------------------------------------------------------ follow

    def _url(self, ref: Ref) -> str:
        base = self.instances[ref.instance].url.rstrip("/")
        return f"{base}/apis/batch/v1/namespaces/{ref.namespace}/jobs/{ref.name}"

    def _marker(self, ref: Ref) -> Any:
        return self.context.data_dir / "force-deleted" / (ref.uid or f"{ref.namespace}.{ref.name}")

    def _remember_deleted(self, ref: Ref) -> None:
        with self._lock:
            self._deleted.add(ref.uid or ref.name)
        try:
            path = self._marker(ref)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{ref.instance} {ref.namespace} {ref.name}\n")
        except OSError as exc:
            log.warning("cannot record the forced deletion of Job %s: %s", ref.name, exc)

    def _deleted_by_us(self, ref: Ref) -> bool:
        with self._lock:
            if (ref.uid or ref.name) in self._deleted:
                return True
        return self._marker(ref).exists()

    async def _job(self, client: KubernetesClient, ref: Ref) -> dict[str, Any] | None:
        """The Job, or None when a forced stop of ASCOB deleted it."""
        with kit.following(f"kubernetes: Job {ref.name}", also=(ValueError,)):
            try:
                data = await client.get_job(ref.namespace, ref.name)
            except kit.SystemHTTPError as exc:
                if exc.status_code == 404 and self._deleted_by_us(ref):
                    return None
                raise
        uid = (data.get("metadata") or {}).get("uid")
        if ref.uid and uid != ref.uid:
            if self._deleted_by_us(ref):
                return None
            raise kit.JobNotFound(f"kubernetes: Job {ref.name} is another Job now (uid {uid})")
        return data

    async def status(self, keys: Mapping[str, str]) -> kit.StatusReport:
        client, ref = self._known(keys)
        data = await self._job(client, ref)
        if data is None:
            return kit.StatusReport(kit.BackendStatus.ABORTED, "job deleted by a forced stop")
        return job_report(data, self._url(ref))

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        client, ref = self._known(keys)
        with kit.following(f"kubernetes stop of Job {ref.name}", missing=(), also=(ValueError,)):
            try:
                if force:
                    self._remember_deleted(ref)
                    await client.delete_job_foreground(ref.namespace, ref.name)
                else:
                    patch = {
                        "metadata": {"annotations": {STOP_ANNOTATION: "suspend"}},
                        "spec": {"suspend": True},
                    }
                    await client.patch_job(ref.namespace, ref.name, patch)
            except kit.SystemHTTPError as exc:
                if exc.status_code != 404 or not self._deleted_by_us(ref):
                    raise

    # ------------------------------------------------------------------ output

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> kit.OutputChunk:
        client, ref = self._known(keys)
        data = await self._job(client, ref)
        if data is None:  # deleted with its pods by a forced stop: no log to read any more
            return kit.OutputChunk("", offset, False)
        final = job_report(data).status.is_final
        start = self._cursors.nearest(ref, offset)
        with kit.following(f"kubernetes logs of Job {ref.name}", missing=(), also=(ValueError,)):
            cursor, lines, writing = await read_on(client, ref.namespace, ref.name, start)
        more = writing or not final
        produced = "".join(f"{line}\n" for line in lines).encode()
        skip = offset - start.offset
        if skip > len(produced):  # an offset beyond the output so far
            return kit.OutputChunk("", offset, more)
        self._cursors.keep(ref, cursor)
        return kit.OutputChunk(produced[skip:].decode(errors="ignore"), cursor.offset, more)
