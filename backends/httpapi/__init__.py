"""``httpBackend``: runs a job on any home-grown HTTP job service, described in configuration.

Configuration (section ``[http.<instance>]`` of the ``ASCOB_CONFIG`` TOML file)::

    [http.deployer]
    timeout = 10                          # seconds per HTTP call
    secret_env = ["DEPLOYER_TOKEN"]       # variables that header values may use as {env.NAME}
    headers = { Authorization = "Bearer {env.DEPLOYER_TOKEN}" }   # sent with every request

    [http.deployer.start]
    method = "POST"
    url = "https://jobs.example/jobs"
    body = { task = "deploy", ref = "{run_id}", params = { version = "{param.VERSION}" } }
    accept = [201]                        # default [200, 201, 202]
    job_id = "job.id"                     # JSON path in the answer, or:
    # job_id_header = "Location"          # the last path segment of that header
    idempotency_header = "Idempotency-Key"  # optional: makes a lost answer safe to retry
    # attempts = 4                        # with idempotency_header: tries in all
    # retry_pause = 0.5                   # seconds, doubled after each try

    [http.deployer.status]
    url = "https://jobs.example/jobs/{job_id}"
    path = "job.status"
    message_path = "job.error"            # optional
    web_url = "https://jobs.example/ui/{job_id}"   # optional: the job's page
    map = { waiting = "queued", working = "running", ok = "succeeded", error = "failed" }

    [http.deployer.output]                # optional
    url = "https://jobs.example/jobs/{job_id}/log?offset={offset}"
    # or: path = "job.log" (whole text in the status answer, or in the answer of url)

    [http.deployer.stop]                  # optional; force_stop likewise (else stop is used)
    url = "https://jobs.example/jobs/{job_id}/cancel"

Templates and their variables are described in :mod:`backends.httpapi.templates` and
:mod:`backends.httpapi.config`.

Labels: ``http_instance`` (may be left out when one instance is configured). Parameters reach
the job only through ``{param.NAME}`` in the start templates; a template naming a parameter the
job does not have refuses the job (:class:`UnknownVariable`, a SpecRejected that is also a
SubmitRefused: the API's validate() sees only labels, so the run ends FAILED).

Identification keys: ``httpInstance``, ``httpJobId``, ``httpRunId``.

Lost start answers: without ``idempotency_header``, a start whose answer is lost (timeout after
sending, 5xx, broken connection) raises :class:`~backends.OutcomeUnknown` (not a BackendError:
the run ends IN_DOUBT). With it, the start is sent again with the same key
(``ascob-<run_id>-<nonce>``, the nonce derived from the run's secret webhook id, so it is the same
in every process), up to ``attempts`` times; the service must answer a repeated key with the job
it already made.
"""

from __future__ import annotations

__all__ = ["HttpBackend", "UnknownVariable"]

import asyncio
import hashlib
import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from backends import kit
from backends.httpapi.client import HttpServiceClient, snippet
from backends.httpapi.config import Instance, RequestSpec
from backends.httpapi.templates import (
    TemplateError,
    header_value,
    render,
    render_body,
    scalar_text,
    to_json,
    url_value,
)

log = logging.getLogger(__name__)

INSTANCE_LABEL = "http_instance"

_GONE = (404, 409, 410)  # a stop answered so: the job is already over (or never was)


class UnknownVariable(kit.SpecRejected, kit.SubmitRefused):
    """A template names a variable the job does not provide (e.g. a missing parameter)."""


class HttpBackend(kit.KitBackend[Instance, HttpServiceClient]):
    id = "httpBackend"
    config_section = "http"
    takes = (INSTANCE_LABEL,)
    instance_type = Instance

    def make_client(self, instance: Instance) -> HttpServiceClient:
        return HttpServiceClient("", timeout=instance.timeout, transport=self.transport)

    # ------------------------------------------------------------------ requests

    def _secrets(self, inst: Instance, problem: type[Exception]) -> dict[str, str]:
        values: dict[str, str] = {}
        for variable in sorted(inst.secret_env):
            value = os.environ.get(variable)
            if value is None:
                raise problem(
                    f"http instance {inst.name!r}: environment variable {variable} "
                    "(listed in secret_env) is not set"
                )
            values[f"env.{variable}"] = value
        return values

    def _render(
        self,
        inst: Instance,
        spec: RequestSpec,
        values: Mapping[str, str],
        secrets: Mapping[str, str],
    ) -> tuple[str, dict[str, str], bytes | None]:
        """The request's URL, headers and body. Raises :class:`TemplateError`."""
        url = render(spec.url, values, url_value)
        with_secrets = {**values, **secrets}
        headers = {
            k: render(v, with_secrets, header_value)
            for k, v in {**inst.headers, **spec.headers}.items()
        }
        body = None if spec.body is None else to_json(render_body(spec.body, values))
        return url, headers, body

    async def _follow_call(
        self,
        inst: Instance,
        spec: RequestSpec,
        values: Mapping[str, str],
        what: str,
        gone_ok: bool = False,
    ) -> httpx.Response:
        """A request after the start (status, output, stop): every failure is transient, except
        404 (the service no longer knows the job). ``gone_ok``: 404/409/410 are answers too."""
        try:
            url, headers, body = self._render(
                inst, spec, values, self._secrets(inst, kit.BackendUnavailable)
            )
        except (TemplateError, ValueError) as exc:
            raise kit.BackendUnavailable(f"http {inst.name!r} {what}: {exc}") from exc
        try:
            response = await self.client(inst).exchange(spec.method, url, headers, body)
        except httpx.HTTPError as exc:
            raise kit.BackendUnavailable(f"http {inst.name!r} {what}: {kit.describe(exc)}") from exc
        if gone_ok and response.status_code in _GONE:
            return response
        if response.status_code == 404:
            raise kit.JobNotFound(f"http {inst.name!r} {what}: HTTP 404: {snippet(response)}")
        if response.status_code >= 400:
            raise kit.BackendUnavailable(
                f"http {inst.name!r} {what}: HTTP {response.status_code}: {snippet(response)}"
            )
        return response

    def _known(self, keys: Mapping[str, str]) -> tuple[Instance, dict[str, str]]:
        (job_id,) = kit.required(keys, "httpJobId")
        inst = self.instances.for_keys(keys)
        return inst, {"job_id": job_id, "run_id": keys.get("httpRunId", "")}

    # ------------------------------------------------------------------ submit

    @staticmethod
    def idempotency_key(job: kit.Job) -> str:
        nonce = hashlib.sha256(f"ascob-start:{job.webhook_id}".encode()).hexdigest()[:16]
        return f"ascob-{job.run_id}-{nonce}"

    async def submit(self, job: kit.Job) -> dict[str, str]:
        try:
            inst = self.instances.for_labels(job.labels)
        except kit.SpecRejected as exc:
            raise kit.SubmitRefused(str(exc)) from exc
        start = inst.start
        where = f"http {inst.name!r} start"
        values = {
            "run_id": str(job.run_id),
            "webhook_id": job.webhook_id,
            **{f"param.{k}": v for k, v in job.parameters.items()},
        }
        try:
            url, headers, body = self._render(
                inst, start.request, values, self._secrets(inst, kit.SubmitRefused)
            )
        except TemplateError as exc:
            given = ", ".join(sorted(job.parameters)) or "none"
            raise UnknownVariable(
                f"{where}: the template names {{{exc.name}}}, which this job does not provide "
                f"(its parameters: {given})"
            ) from exc
        except ValueError as exc:
            raise kit.SubmitRefused(f"{where}: {exc}") from exc
        attempts = 1
        if start.idempotency_header:
            headers[start.idempotency_header] = self.idempotency_key(job)
            attempts = start.attempts
        client = self.client(inst)
        reached, last = False, ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(start.retry_pause * 2 ** (attempt - 1))
                log.warning("run %s: %s: trying again (%s)", job.run_id, where, last)
            try:
                response = await client.exchange(start.request.method, url, headers, body)
            except httpx.HTTPError as exc:
                if kit.may_have_arrived(exc):
                    reached, last = True, f"no answer ({kit.describe(exc)})"
                else:
                    last = f"cannot connect ({kit.describe(exc)})"
                continue
            code = response.status_code
            if code >= 500:
                reached, last = True, f"HTTP {code}: {snippet(response)}"
                continue
            if 400 <= code < 500:
                if not reached:
                    raise kit.SubmitRefused(f"{where}: HTTP {code}: {snippet(response)}")
                last = f"HTTP {code}: {snippet(response)}"
                if code == 409 and attempt < attempts - 1:
                    continue  # the first try is still being processed under that key
                raise kit.OutcomeUnknown(
                    f"{where}: an earlier try may have started the job, and the retry answered "
                    f"{last}; outcome unknown"
                )
            if code not in start.accept:
                accepted = ", ".join(str(c) for c in sorted(start.accept))
                raise kit.OutcomeUnknown(
                    f"{where}: answered HTTP {code}, not one of the accepted codes ({accepted}); "
                    "outcome unknown"
                )
            job_id = self._job_id(inst, response, where)
            log.info("run %s: %s made job %s", job.run_id, where, job_id)
            return {"httpInstance": inst.name, "httpJobId": job_id, "httpRunId": str(job.run_id)}
        if not reached:
            raise kit.SubmitRefused(f"{where}: {last}")
        tries = f" after {attempts} tries" if attempts > 1 else ""
        hint = "" if start.idempotency_header else " (set idempotency_header to retry safely)"
        raise kit.OutcomeUnknown(f"{where}: {last}{tries}; outcome unknown{hint}")

    @staticmethod
    def _job_id(inst: Instance, response: httpx.Response, where: str) -> str:
        start = inst.start
        if start.job_id_header is not None:
            value = response.headers.get(start.job_id_header)
            segment = unquote(urlsplit(value).path.rstrip("/").rsplit("/", 1)[-1]) if value else ""
            if not segment:
                raise kit.SubmitRefused(
                    f"{where}: the answer (HTTP {response.status_code}) has no "
                    f"{start.job_id_header} header with the job id: {snippet(response)}"
                )
            return segment
        assert start.job_id_path is not None
        try:
            found = scalar_text(start.job_id_path.find(response.json()))
        except (ValueError, LookupError):
            found = None
        if not found:
            raise kit.SubmitRefused(
                f"{where}: the answer (HTTP {response.status_code}) has no job id at "
                f"{start.job_id_path.text}: {snippet(response)}"
            )
        return found

    # ------------------------------------------------------------------ follow

    async def status(self, keys: Mapping[str, str]) -> kit.StatusReport:
        inst, values = self._known(keys)
        spec = inst.status
        response = await self._follow_call(inst, spec.request, values, "status")
        return self._report(inst, values, response)

    def _report(
        self, inst: Instance, values: Mapping[str, str], response: httpx.Response
    ) -> kit.StatusReport:
        spec = inst.status
        where = f"http {inst.name!r} status of job {values['job_id']}"
        try:
            data: Any = response.json()
        except ValueError as exc:
            raise kit.BackendUnavailable(f"{where}: not JSON: {snippet(response)}") from exc
        try:
            value = scalar_text(spec.path.find(data))
        except LookupError as exc:
            raise kit.BackendUnavailable(f"{where}: {exc}: {snippet(response)}") from exc
        mapped = spec.statuses.get(value) if value is not None else None
        if mapped is None:
            raise kit.BackendUnavailable(
                f"{where}: unknown status value {value!r} (not in [http.{inst.name}.status] map); "
                "polling goes on"
            )
        message: str | None = None
        if spec.message_path is not None:
            try:
                message = scalar_text(spec.message_path.find(data))
            except LookupError:
                message = None
        if message is None and mapped in (kit.BackendStatus.FAILED, kit.BackendStatus.ABORTED):
            message = f"job {values['job_id']}: {value}"
        url = None
        if spec.web_url is not None:
            try:
                url = render(spec.web_url, values, url_value)
            except TemplateError:
                url = None
        return kit.StatusReport(mapped, message, url)

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> kit.OutputChunk:
        inst, values = self._known(keys)
        spec = inst.output
        if spec is None:
            return kit.OutputChunk("", offset, False)
        try:  # first the status: if final now, the text read next is complete
            more = not (await self.status(keys)).status.is_final
        except kit.BackendUnavailable:
            more = True
        where = f"http {inst.name!r} output of job {values['job_id']}"
        response = await self._follow_call(
            inst, spec.request, {**values, "offset": str(offset)}, "output"
        )
        if spec.path is None:
            text = response.text
        else:
            try:
                found = spec.path.find(response.json())
            except (ValueError, LookupError) as exc:
                raise kit.BackendUnavailable(f"{where}: {exc}: {snippet(response)}") from exc
            text = "" if found is None else scalar_text(found) or ""
        if spec.by_offset:
            return kit.OutputChunk(text, offset + len(text.encode()), more)
        whole = text.encode()
        rest = whole[offset:].decode("utf-8", errors="replace")
        return kit.OutputChunk(rest, max(offset, len(whole)), more)

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        inst, values = self._known(keys)
        spec = inst.force_stop if force and inst.force_stop is not None else inst.stop
        if spec is None:
            log.warning(
                "http instance %s has no stop request: job %s goes on", inst.name, values["job_id"]
            )
            return
        response = await self._follow_call(inst, spec, values, "stop", gone_ok=True)
        if response.status_code in _GONE:
            log.warning(
                "http %s: stop of job %s answered %s (already over?): %s",
                inst.name,
                values["job_id"],
                response.status_code,
                snippet(response),
            )

    async def aclose(self) -> None:
        await self._clients.aclose()
