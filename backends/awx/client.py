"""A thin async client for the AWX / Ansible Automation Platform controller API (``/api/v2/``,
or ``/api/controller/v2/`` through the AAP 2.5+ gateway), over ``httpx.AsyncClient``.

Paths are relative to the API prefix. Objects are addressed by their *kind* as AWX names them in
its ``type`` field (``job``, ``workflow_job``, ``project_update``, ...): a unified job of kind
``k`` lives at ``{k}s/{id}/``, and templates at ``job_templates/`` and
``workflow_job_templates/``.

Every call raises the kit's ``SystemHTTPError`` (AWX's ``detail`` or field errors kept),
``SystemProtocolError``, or an ``httpx.HTTPError``.
"""

from __future__ import annotations

from typing import Any

import httpx

from backends.kit import ApiClient, SystemHTTPError

__all__ = ["DEFAULT_API_PREFIX", "EVENT_PATHS", "TEMPLATE_PATHS", "AwxClient"]

DEFAULT_API_PREFIX = "/api/v2/"
PAGE_SIZE = 200  # AWX's default MAX_PAGE_SIZE
MAX_PAGES = 500  # 100 000 events: a bound, not a limit anyone should meet

# template kind -> (its collection, the collection of the jobs it spawned)
TEMPLATE_PATHS = {
    "job": ("job_templates", "jobs"),
    "workflow_job": ("workflow_job_templates", "workflow_jobs"),
}
# unified job kind -> the path of its events (kinds without events print nothing)
EVENT_PATHS = {
    "job": "jobs/{id}/job_events/",
    "project_update": "project_updates/{id}/events/",
    "inventory_update": "inventory_updates/{id}/events/",
    "ad_hoc_command": "ad_hoc_commands/{id}/events/",
    "system_job": "system_jobs/{id}/events/",
}


def _flatten(data: Any) -> str:
    """AWX's error body in one line: ``detail``, or ``field: message`` pairs."""
    if isinstance(data, dict):
        if "detail" in data:
            return str(data["detail"])
        parts = []
        for key, value in data.items():
            text = "; ".join(map(str, value)) if isinstance(value, list) else str(value)
            parts.append(f"{key}: {text}")
        return "; ".join(parts)
    if isinstance(data, list):
        return "; ".join(map(str, data))
    return str(data)


def normalize_prefix(prefix: str) -> str:
    return "/" + prefix.strip("/") + "/"


class AwxClient(ApiClient):
    """One AWX / AAP controller, one API prefix (its URL is ``<server><prefix>``), one Bearer
    token."""

    system = "awx"

    def error_message(self, response: httpx.Response) -> str:
        message = super().error_message(response)
        try:
            return _flatten(response.json())[:1000] or message
        except ValueError:
            return message

    async def _list(self, path: str, params: dict[str, str], pages: int = MAX_PAGES) -> list[Any]:
        """Every result of a paginated list (``page``/``page_size``; ``next`` says if more)."""
        results: list[Any] = []
        for page in range(1, pages + 1):
            data = await self.object(
                "GET", path, params={**params, "page_size": str(PAGE_SIZE), "page": str(page)}
            )
            chunk = data.get("results")
            if not isinstance(chunk, list):
                raise self.protocol_error(f"GET {path}: no results list")
            results.extend(item for item in chunk if isinstance(item, dict))
            if not data.get("next"):
                break
        return results

    # ------------------------------------------------------------------ templates

    async def template(self, kind: str, template_id: int) -> dict[str, Any]:
        return await self.object("GET", f"{TEMPLATE_PATHS[kind][0]}/{template_id}/")

    async def templates_named(self, kind: str, name: str) -> list[dict[str, Any]]:
        found = await self._list(f"{TEMPLATE_PATHS[kind][0]}/", {"name": name}, pages=5)
        return [t for t in found if t.get("name") == name]

    async def launch(
        self, kind: str, template_id: int, extra_vars: dict[str, str]
    ) -> httpx.Response:
        """POST .../launch/; the raw answer (the caller decides what a broken one means)."""
        return await self.send(
            "POST",
            f"{TEMPLATE_PATHS[kind][0]}/{template_id}/launch/",
            json={"extra_vars": extra_vars},
        )

    async def recent_jobs(self, kind: str, template_id: int) -> list[dict[str, Any]]:
        """The template's most recent jobs (one page, newest first)."""
        collection, jobs = TEMPLATE_PATHS[kind]
        return await self._list(f"{collection}/{template_id}/{jobs}/", {"order_by": "-id"}, 1)

    # ------------------------------------------------------------------ unified jobs

    async def unified_job(self, kind: str, job_id: int) -> dict[str, Any]:
        return await self.object("GET", f"{kind}s/{job_id}/")

    async def cancel(self, kind: str, job_id: int) -> bool:
        """Ask AWX to cancel; False if the job can no longer be canceled (405: it has ended)."""
        try:
            await self.send("POST", f"{kind}s/{job_id}/cancel/")
        except SystemHTTPError as exc:
            if exc.status_code == 405:
                return False
            raise
        return True

    async def events(self, kind: str, job_id: int, from_line: int = 0) -> list[dict[str, Any]]:
        """The job's events from output line ``from_line`` on, in line order."""
        path = EVENT_PATHS[kind].format(id=job_id)
        params = {"order_by": "start_line"}
        if from_line:
            params["start_line__gte"] = str(from_line)
        return await self._list(path, params)

    async def workflow_nodes(self, workflow_job_id: int) -> list[dict[str, Any]]:
        return await self._list(f"workflow_jobs/{workflow_job_id}/workflow_nodes/", {})
