"""A thin async client for the Rundeck / PagerDuty Process Automation API (JSON), over
``httpx.AsyncClient``.

Every call raises :class:`RundeckHTTPError` (an error status; Rundeck's ``message`` kept),
:class:`RundeckProtocolError` (an answer the API does not document), or an ``httpx.HTTPError``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["DEFAULT_API_VERSION", "RundeckClient", "RundeckHTTPError", "RundeckProtocolError"]

DEFAULT_API_VERSION = 41


class RundeckHTTPError(Exception):
    """Rundeck answered with an error status."""

    def __init__(self, status_code: int, message: str, error_code: str | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.error_code = error_code


class RundeckProtocolError(Exception):
    """Rundeck answered something its API does not document (malformed JSON, ...)."""


def _error(response: httpx.Response) -> RundeckHTTPError:
    message, code = response.text.strip()[:300] or response.reason_phrase, None
    try:
        data = response.json()
        if isinstance(data, dict):
            message = str(data.get("message") or message)
            code = data.get("errorCode")
    except ValueError:
        pass
    return RundeckHTTPError(response.status_code, message, code)


class RundeckClient:
    """One Rundeck server, one API version."""

    def __init__(
        self,
        url: str,
        token: str | None,
        api_version: int = DEFAULT_API_VERSION,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["X-Rundeck-Auth-Token"] = token
        self._http = httpx.AsyncClient(
            base_url=f"{url.rstrip('/')}/api/{api_version}/",
            headers=headers,
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        response = await self._http.request(method, path, params=params, json=body)
        if response.status_code >= 400:
            raise _error(response)
        try:
            return response.json()
        except ValueError as exc:
            raise RundeckProtocolError(f"{method} {path}: malformed JSON") from exc

    async def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        data = await self._call(method, path, **kwargs)
        if not isinstance(data, dict):
            raise RundeckProtocolError(f"{method} {path}: expected a JSON object")
        return data

    # ------------------------------------------------------------------ API

    async def find_jobs(self, project: str, name: str, group: str | None) -> list[dict[str, Any]]:
        """Jobs of ``project`` whose name is exactly ``name`` (and group, if given)."""
        params = {"jobExactFilter": name}
        if group is not None:
            params["groupPathExact"] = group
        data = await self._call("GET", f"project/{quote(project, safe='')}/jobs", params=params)
        if not isinstance(data, list):
            raise RundeckProtocolError("job list: expected a JSON array")
        return [j for j in data if isinstance(j, dict) and j.get("name") == name]

    async def job_info(self, job_id: str) -> dict[str, Any]:
        return await self._object("GET", f"job/{quote(job_id, safe='')}/info")

    async def run_job(self, job_id: str, options: dict[str, str]) -> dict[str, Any]:
        return await self._object(
            "POST", f"job/{quote(job_id, safe='')}/run", body={"options": options}
        )

    async def execution(self, execution_id: str) -> dict[str, Any]:
        return await self._object("GET", f"execution/{quote(execution_id, safe='')}")

    async def job_executions(
        self, job_id: str, limit: int = 50, offset: int = 0
    ) -> list[dict[str, Any]]:
        """The job's executions, newest first."""
        data = await self._object(
            "GET",
            f"job/{quote(job_id, safe='')}/executions",
            params={"max": str(limit), "offset": str(offset)},
        )
        executions = data.get("executions") or []
        if not isinstance(executions, list):
            raise RundeckProtocolError("job executions: expected a list")
        return [e for e in executions if isinstance(e, dict)]

    async def output(self, execution_id: str, offset: int) -> dict[str, Any]:
        return await self._object(
            "GET",
            f"execution/{quote(execution_id, safe='')}/output",
            params={"offset": str(offset), "format": "json"},
        )

    async def abort(self, execution_id: str, force: bool) -> dict[str, Any]:
        params = {"forceIncomplete": "true"} if force else None
        return await self._object(
            "POST", f"execution/{quote(execution_id, safe='')}/abort", params=params
        )
