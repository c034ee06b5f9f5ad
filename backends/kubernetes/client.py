"""A thin async client for the Kubernetes REST API (batch/v1 Jobs, core/v1 pods and their logs),
over ``httpx.AsyncClient``. No Kubernetes client library: the few calls ASCOB needs are plain HTTP.

It speaks only HTTP; what the answers mean for ASCOB is decided in :mod:`backends.kubernetes`.
Every call raises the kit's ``SystemHTTPError`` (an error status; the API's ``Status`` object's
``reason`` and ``message`` kept), ``SystemProtocolError`` (an answer the API does not document),
or an ``httpx.HTTPError`` (no answer).
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote

import httpx

from backends.kit import ApiClient, SystemHTTPError

__all__ = ["KubernetesClient"]

MERGE_PATCH = "application/merge-patch+json"


def tls_verify(ca_file: str | None, insecure: bool) -> bool | ssl.SSLContext:
    """How the server's certificate is checked: against ``ca_file``, not at all (``insecure``),
    or against the system's CAs."""
    if insecure:
        return False
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


def _q(segment: str) -> str:
    return quote(segment, safe="")


class KubernetesClient(ApiClient):
    """One API server, bearer-token authentication (``verify``: see :func:`tls_verify`)."""

    system = "kubernetes"

    def error(self, response: httpx.Response) -> SystemHTTPError:
        """The ``Status`` object's ``message`` and ``reason`` (``AlreadyExists``, ...)."""
        message, reason = super().error_message(response), ""
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("kind") == "Status":
            message = str(data.get("message") or message)
            reason = str(data.get("reason") or "")
        return SystemHTTPError(self.system, response.status_code, message, reason)

    async def _send(
        self, method: str, path: str, content_type: str = "application/json", **kwargs: Any
    ) -> httpx.Response:
        headers = {"Content-Type": content_type} if kwargs.get("json") is not None else None
        return await self.send(method, path, headers=headers, **kwargs)

    async def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._send(method, path, **kwargs)
        data = self.decode(response, f"{method} {path}")
        if not isinstance(data, dict):
            raise self.protocol_error(f"{method} {path}: expected a JSON object")
        return data

    @staticmethod
    def _jobs(namespace: str) -> str:
        return f"/apis/batch/v1/namespaces/{_q(namespace)}/jobs"

    # ------------------------------------------------------------------ Jobs

    async def create_job(self, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
        return await self._object("POST", self._jobs(namespace), json=job)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._object("GET", f"{self._jobs(namespace)}/{_q(name)}")

    async def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386) of the Job."""
        return await self._object(
            "PATCH", f"{self._jobs(namespace)}/{_q(name)}", json=patch, content_type=MERGE_PATCH
        )

    async def delete_job_foreground(self, namespace: str, name: str) -> None:
        """Delete the Job and, first, its pods (never without a propagation policy: batch/v1
        Jobs default to orphaning their pods, which would keep running)."""
        await self._send(
            "DELETE",
            f"{self._jobs(namespace)}/{_q(name)}",
            params={"propagationPolicy": "Foreground", "gracePeriodSeconds": "0"},
        )

    # ------------------------------------------------------------------ pods

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        data = await self._object(
            "GET",
            f"/api/v1/namespaces/{_q(namespace)}/pods",
            params={"labelSelector": label_selector},
        )
        items = data.get("items")
        if not isinstance(items, list):
            raise self.protocol_error("pod list: expected items")
        return [p for p in items if isinstance(p, dict)]

    async def pod_log(
        self, namespace: str, pod: str, container: str, since_time: str | None = None
    ) -> str:
        """The container's log, each line prefixed by its RFC 3339 timestamp."""
        params = {"container": container, "timestamps": "true"}
        if since_time is not None:
            params["sinceTime"] = since_time
        response = await self._send(
            "GET", f"/api/v1/namespaces/{_q(namespace)}/pods/{_q(pod)}/log", params=params
        )
        return response.text
