"""A thin async client for the GitLab REST API v4 (the pipelines and jobs endpoints), over
``httpx.AsyncClient``.

It speaks only HTTP; what the answers mean for ASCOB is decided in :mod:`backends.gitlab`.
The project is a numeric id or a ``group/sub/project`` path; paths are URL-encoded as one path
segment (``group%2Fsub%2Fproject``), as GitLab requires. Every call raises
:class:`GitLabHTTPError` (an error status, with GitLab's ``message`` kept),
:class:`GitLabProtocolError` (an answer the API does not document), or an ``httpx.HTTPError``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["GitLabClient", "GitLabHTTPError", "GitLabProtocolError", "error_message"]

_PER_PAGE = 100
_MAX_PAGES = 20  # 2000 jobs in one pipeline is already far beyond what a run should have


class GitLabHTTPError(Exception):
    """GitLab answered with an error status."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message


class GitLabProtocolError(Exception):
    """GitLab answered something its API does not document (malformed JSON, ...)."""


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


def _error(response: httpx.Response) -> GitLabHTTPError:
    message = None
    try:
        message = error_message(response.json())
    except ValueError:
        pass
    if not message:
        message = " ".join(response.text.split())[:300] or response.reason_phrase
    return GitLabHTTPError(response.status_code, message)


def _project(project: str) -> str:
    return "projects/" + quote(project, safe="")


class GitLabClient:
    """One GitLab server, authenticated with a personal, group or project access token."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["PRIVATE-TOKEN"] = token
        self._http = httpx.AsyncClient(
            base_url=f"{url.rstrip('/')}/api/v4/",
            headers=headers,
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ plumbing

    async def _send(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> httpx.Response:
        response = await self._http.request(method, path, params=params, json=body)
        if response.status_code >= 400:
            raise _error(response)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise GitLabProtocolError(f"{method} {path}: malformed JSON") from exc

    async def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        data = await self._json(method, path, **kwargs)
        if not isinstance(data, dict):
            raise GitLabProtocolError(f"{method} {path}: expected a JSON object")
        return data

    async def _list(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        data = await self._json("GET", path, params=params)
        if not isinstance(data, list):
            raise GitLabProtocolError(f"GET {path}: expected a JSON array")
        return [item for item in data if isinstance(item, dict)]

    # ------------------------------------------------------------------ API

    async def project(self, project: str) -> dict[str, Any]:
        return await self._object("GET", _project(project))

    async def create_pipeline(
        self, project: str, ref: str, variables: list[dict[str, str]]
    ) -> dict[str, Any]:
        return await self._object(
            "POST", f"{_project(project)}/pipeline", body={"ref": ref, "variables": variables}
        )

    async def pipeline(self, project: str, pipeline_id: str) -> dict[str, Any]:
        return await self._object("GET", f"{_project(project)}/pipelines/{pipeline_id}")

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
        return await self._list(f"{_project(project)}/pipelines", params)

    async def pipeline_variables(self, project: str, pipeline_id: str) -> list[dict[str, Any]]:
        return await self._list(f"{_project(project)}/pipelines/{pipeline_id}/variables", {})

    async def pipeline_jobs(self, project: str, pipeline_id: str) -> list[dict[str, Any]]:
        """Every job of the pipeline, retried attempts included (in GitLab's order: newest
        first)."""
        jobs: list[dict[str, Any]] = []
        page = "1"
        for _ in range(_MAX_PAGES):
            response = await self._send(
                "GET",
                f"{_project(project)}/pipelines/{pipeline_id}/jobs",
                params={"include_retried": "true", "per_page": str(_PER_PAGE), "page": page},
            )
            try:
                data = response.json()
            except ValueError as exc:
                raise GitLabProtocolError("pipeline jobs: malformed JSON") from exc
            if not isinstance(data, list):
                raise GitLabProtocolError("pipeline jobs: expected a JSON array")
            jobs.extend(item for item in data if isinstance(item, dict))
            page = response.headers.get("x-next-page", "").strip()
            if not page:
                return jobs
        raise GitLabProtocolError(f"pipeline {pipeline_id} has more than {len(jobs)} jobs")

    async def trace(self, project: str, job_id: str) -> bytes:
        """The job's whole log as GitLab has it so far (no ranges); empty before it starts
        (GitLab answers 404 while a job has no log)."""
        try:
            response = await self._send("GET", f"{_project(project)}/jobs/{job_id}/trace")
        except GitLabHTTPError as exc:
            if exc.status_code == 404:
                return b""
            raise
        return response.content

    async def cancel_pipeline(self, project: str, pipeline_id: str) -> dict[str, Any]:
        return await self._object("POST", f"{_project(project)}/pipelines/{pipeline_id}/cancel")

    async def cancel_job(self, project: str, job_id: str, force: bool = False) -> dict[str, Any]:
        params = {"force": "true"} if force else None
        return await self._object(
            "POST", f"{_project(project)}/jobs/{job_id}/cancel", params=params
        )
