"""A thin async client for the Rundeck / PagerDuty Process Automation API (JSON), over the kit's
:class:`~backends.kit.ApiClient`: every call raises the kit's ``SystemHTTPError`` (Rundeck's
``message`` kept), ``SystemProtocolError``, or an ``httpx.HTTPError``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from backends.kit import ApiClient

__all__ = ["DEFAULT_API_VERSION", "RundeckClient"]

DEFAULT_API_VERSION = 41


class RundeckClient(ApiClient):
    """One Rundeck server, one API version (its URL is ``<server>/api/<version>``)."""

    system = "rundeck"

    def token_headers(self, token: str) -> dict[str, str]:
        return {"X-Rundeck-Auth-Token": token}

    def error_message(self, response: httpx.Response) -> str:
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
        return super().error_message(response)

    # ------------------------------------------------------------------ API

    async def find_jobs(self, project: str, name: str, group: str | None) -> list[dict[str, Any]]:
        """Jobs of ``project`` whose name is exactly ``name`` (and group, if given)."""
        params = {"jobExactFilter": name}
        if group is not None:
            params["groupPathExact"] = group
        data = await self.array("GET", f"project/{quote(project, safe='')}/jobs", params=params)
        return [j for j in data if j.get("name") == name]

    async def job_info(self, job_id: str) -> dict[str, Any]:
        return await self.object("GET", f"job/{quote(job_id, safe='')}/info")

    async def run_job(self, job_id: str, options: dict[str, str]) -> dict[str, Any]:
        return await self.object(
            "POST", f"job/{quote(job_id, safe='')}/run", json={"options": options}
        )

    async def execution(self, execution_id: str) -> dict[str, Any]:
        return await self.object("GET", f"execution/{quote(execution_id, safe='')}")

    async def job_executions(
        self, job_id: str, limit: int = 50, offset: int = 0
    ) -> list[dict[str, Any]]:
        """The job's executions, newest first."""
        data = await self.object(
            "GET",
            f"job/{quote(job_id, safe='')}/executions",
            params={"max": str(limit), "offset": str(offset)},
        )
        executions = data.get("executions") or []
        if not isinstance(executions, list):
            raise self.protocol_error("job executions: expected a list")
        return [e for e in executions if isinstance(e, dict)]

    async def output(self, execution_id: str, offset: int) -> dict[str, Any]:
        return await self.object(
            "GET",
            f"execution/{quote(execution_id, safe='')}/output",
            params={"offset": str(offset), "format": "json"},
        )

    async def abort(self, execution_id: str, force: bool) -> dict[str, Any]:
        params = {"forceIncomplete": "true"} if force else None
        return await self.object(
            "POST", f"execution/{quote(execution_id, safe='')}/abort", params=params
        )
