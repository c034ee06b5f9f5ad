"""A thin async client for the GitLab REST API v4 (the pipelines and jobs endpoints), over
``httpx.AsyncClient``.

It speaks only HTTP; what the answers mean for ASCOB is decided in :mod:`backends.gitlab`.
The project is a numeric id or a ``group/sub/project`` path; paths are URL-encoded as one path
segment (``group%2Fsub%2Fproject``), as GitLab requires. Every call raises the kit's
``SystemHTTPError`` (GitLab's ``message`` kept), ``SystemProtocolError``, or an
``httpx.HTTPError``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from backends.kit import ApiClient, SystemHTTPError

__all__ = ["GitLabClient", "error_message"]

_PER_PAGE = 100
_MAX_PAGES = 20  # 2000 jobs in one pipeline is already far beyond what a run should have


def error_message(data: Any) -> str | None:
    """GitLab's error text: ``{"message": "..."}``, ``{"message": {"field": ["..."]}}`` (the
    ``base`` field holds messages about the whole object) or ``{"error": "..."}``."""
    if not isinstance(data, dict):
        return None
    message = data.get("message")
    if isinstance(message, str) and message:
        return message
    if isinstance(message, dict):
        parts = []
        for field, value in message.items():
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            parts.append(text if field == "base" else f"{field}: {text}")
        if parts:
            return "; ".join(parts)
    error = data.get("error")
    if isinstance(error, str) and error:
        description = data.get("error_description")
        return f"{error}: {description}" if description else error
    return None


def _project(project: str) -> str:
    return "projects/" + quote(project, safe="")


class GitLabClient(ApiClient):
    """One GitLab server, authenticated with a personal, group or project access token."""

    system = "gitlab"
    api_path = "api/v4"

    def token_headers(self, token: str) -> dict[str, str]:
        return {"PRIVATE-TOKEN": token}

    def error_message(self, response: httpx.Response) -> str:
        message = None
        try:
            message = error_message(response.json())
        except ValueError:
            pass
        return message or " ".join(response.text.split())[:300] or response.reason_phrase

    # ------------------------------------------------------------------ API

    async def project(self, project: str) -> dict[str, Any]:
        return await self.object("GET", _project(project))

    async def create_pipeline(
        self, project: str, ref: str, variables: list[dict[str, str]]
    ) -> dict[str, Any]:
        return await self.object(
            "POST", f"{_project(project)}/pipeline", json={"ref": ref, "variables": variables}
        )

    async def pipeline(self, project: str, pipeline_id: str) -> dict[str, Any]:
        return await self.object("GET", f"{_project(project)}/pipelines/{pipeline_id}")

    async def recent_pipelines(
        self, project: str, ref: str, source: str = "api", count: int = 50
    ) -> list[dict[str, Any]]:
        """The newest pipelines of ``ref`` created through ``source``, newest first."""
        params = {
            "ref": ref,
            "source": source,
            "order_by": "id",
            "sort": "desc",
            "per_page": str(count),
        }
        return await self.array("GET", f"{_project(project)}/pipelines", params=params)

    async def pipeline_variables(self, project: str, pipeline_id: str) -> list[dict[str, Any]]:
        return await self.array("GET", f"{_project(project)}/pipelines/{pipeline_id}/variables")

    async def pipeline_jobs(self, project: str, pipeline_id: str) -> list[dict[str, Any]]:
        """Every job of the pipeline, retried attempts included (in GitLab's order: newest
        first)."""
        jobs: list[dict[str, Any]] = []
        page = "1"
        for _ in range(_MAX_PAGES):
            response = await self.send(
                "GET",
                f"{_project(project)}/pipelines/{pipeline_id}/jobs",
                params={"include_retried": "true", "per_page": str(_PER_PAGE), "page": page},
            )
            data = self.decode(response, "pipeline jobs")
            if not isinstance(data, list):
                raise self.protocol_error("pipeline jobs: expected a JSON array")
            jobs.extend(item for item in data if isinstance(item, dict))
            page = response.headers.get("x-next-page", "").strip()
            if not page:
                return jobs
        raise self.protocol_error(f"pipeline {pipeline_id} has more than {len(jobs)} jobs")

    async def trace(self, project: str, job_id: str) -> bytes:
        """The job's whole log as GitLab has it so far (no ranges); empty before it starts
        (GitLab answers 404 while a job has no log)."""
        try:
            response = await self.send("GET", f"{_project(project)}/jobs/{job_id}/trace")
        except SystemHTTPError as exc:
            if exc.status_code == 404:
                return b""
            raise
        return response.content

    async def cancel_pipeline(self, project: str, pipeline_id: str) -> dict[str, Any]:
        return await self.object("POST", f"{_project(project)}/pipelines/{pipeline_id}/cancel")

    async def cancel_job(self, project: str, job_id: str, force: bool = False) -> dict[str, Any]:
        params = {"force": "true"} if force else None
        return await self.object("POST", f"{_project(project)}/jobs/{job_id}/cancel", params=params)
