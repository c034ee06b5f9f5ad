"""A thin async client for the GitHub Actions REST API (github.com and GitHub Enterprise Server),
over ``httpx.AsyncClient``.

It speaks only HTTP; what the answers mean for ASCOB is decided in :mod:`backends.github`.

Exception tree::

    SystemHTTPError          (the kit's) GitHub answered with an error status (its ``message``)
    └── GitHubRateLimited    403/429 that is a rate limit: ``resume_at`` says when to try again
    SystemProtocolError      (the kit's) an answer the API does not document (malformed JSON, ...)
    httpx.HTTPError          no answer (connection refused, timeout, ...)

Conditional requests: GET answers are kept with their ``ETag`` and asked for again with
``If-None-Match``; GitHub answers 304 when nothing changed, and a 304 does not count against the
rate limit. Polling a run and following its output therefore costs little of the hourly budget.

Rate limits: a 403 or 429 carrying ``retry-after``, or ``x-ratelimit-remaining: 0`` with
``x-ratelimit-reset``, or naming a (secondary) rate limit, is a :class:`GitHubRateLimited`. The
client then refuses to send anything to that server until ``resume_at`` (raising the same
exception without a request), because GitHub may ban an integration that keeps calling while
limited.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

import httpx

from backends.kit import ApiClient, SystemHTTPError

__all__ = ["API_VERSION", "GitHubClient", "GitHubRateLimited"]

API_VERSION = "2022-11-28"  # the REST API version every GitHub and GHES release knows
_SECONDARY_LIMIT_WAIT = 60.0  # GitHub: without headers, wait at least a minute
_PAGE = 100
_ETAGS = 256  # GET answers kept for conditional requests, per client


class GitHubRateLimited(SystemHTTPError):
    """A rate limit: nothing was done; try again at ``resume_at`` (``time.time()`` seconds)."""

    def __init__(self, status_code: int, message: str, resume_at: float) -> None:
        super().__init__("github", status_code, message)
        self.resume_at = resume_at

    def wait(self) -> float:
        return max(0.0, self.resume_at - time.time())


def _message(response: httpx.Response) -> str:
    """GitHub's ``message`` (and validation ``errors``), else the start of the body."""
    text = response.text.strip()
    try:
        data = response.json()
    except ValueError:
        return text[:300] or response.reason_phrase
    if not isinstance(data, dict):
        return text[:300] or response.reason_phrase
    message = str(data.get("message") or response.reason_phrase)
    errors = data.get("errors")
    if isinstance(errors, list) and errors:
        details = [
            str(e.get("message") or e.get("code") or e) if isinstance(e, dict) else str(e)
            for e in errors
        ]
        message = f"{message} ({'; '.join(details)})"
    return message


def _rate_limit_resume(response: httpx.Response, message: str) -> float | None:
    """When a 403/429 is a rate limit: the time to resume; None for any other refusal."""
    if response.status_code not in (403, 429):
        return None
    now = time.time()
    retry_after = response.headers.get("retry-after")
    if retry_after is not None:
        try:
            return now + max(1.0, float(retry_after))
        except ValueError:
            return now + _SECONDARY_LIMIT_WAIT
    if response.headers.get("x-ratelimit-remaining") == "0":
        try:
            return max(now + 1.0, float(response.headers["x-ratelimit-reset"]))
        except (KeyError, ValueError):
            return now + _SECONDARY_LIMIT_WAIT
    if response.status_code == 429 or "rate limit" in message.lower():
        return now + _SECONDARY_LIMIT_WAIT
    return None


def _repo_path(repository: str) -> str:
    owner, _, name = repository.partition("/")
    return f"repos/{quote(owner, safe='')}/{quote(name, safe='')}"


class GitHubClient(ApiClient):
    """One GitHub (or GHES) API root, one token."""

    system = "github"
    headers = {
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": API_VERSION,
        "User-Agent": "ascob",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_at = 0.0  # rate limited until then: send nothing
        self._etags: OrderedDict[str, tuple[str, Any]] = OrderedDict()

    # ------------------------------------------------------------------ plumbing

    def error(self, response: httpx.Response) -> SystemHTTPError:
        message = _message(response)
        resume_at = _rate_limit_resume(response, message)
        if resume_at is None:
            return SystemHTTPError(self.system, response.status_code, message)
        self.resume_at = max(self.resume_at, resume_at)
        return GitHubRateLimited(response.status_code, message, resume_at)

    async def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if time.time() < self.resume_at:
            raise GitHubRateLimited(
                429, "rate limited (waiting before the next call)", self.resume_at
            )
        return await super().send(method, path, **kwargs)

    async def object(
        self, method: str, path: str, params: dict[str, str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """A JSON object; a GET is asked again with its ETag (a 304 costs no rate limit)."""
        key = f"{path}?{sorted((params or {}).items())}" if method == "GET" else ""
        cached = self._etags.get(key) if key else None
        headers = {"If-None-Match": cached[0]} if cached else None
        response = await self.send(method, path, params=params, headers=headers, **kwargs)
        if response.status_code == 304 and cached:
            self._etags.move_to_end(key)
            return dict(cached[1])
        data = self.decode(response, f"{method} {path}")
        if not isinstance(data, dict):
            raise self.protocol_error(f"{method} {path}: expected a JSON object")
        etag = response.headers.get("etag")
        if key and etag:
            self._etags[key] = (etag, data)
            self._etags.move_to_end(key)
            while len(self._etags) > _ETAGS:
                self._etags.popitem(last=False)
        return data

    # ------------------------------------------------------------------ API

    async def repository(self, repository: str) -> dict[str, Any]:
        """GET /repos/{owner}/{repo} (``default_branch``, ``html_url``)."""
        return await self.object("GET", _repo_path(repository))

    async def workflow(self, repository: str, workflow: str) -> dict[str, Any]:
        """A workflow by file name or id (``id``, ``state``, ``path``)."""
        path = f"{_repo_path(repository)}/actions/workflows/{quote(workflow, safe='')}"
        return await self.object("GET", path)

    async def dispatch(
        self,
        repository: str,
        workflow_id: str,
        ref: str,
        inputs: dict[str, str],
        return_run_details: bool,
    ) -> dict[str, Any] | None:
        """Create a workflow_dispatch event: the run details (200), or None (204, no body)."""
        body: dict[str, Any] = {"ref": ref, "inputs": inputs}
        if return_run_details:
            body["return_run_details"] = True
        path = (
            f"{_repo_path(repository)}/actions/workflows/{quote(workflow_id, safe='')}/dispatches"
        )
        response = await self.send("POST", path, json=body)
        if response.status_code == 204 or not response.content.strip():
            return None
        data = self.decode(response, "dispatch")
        if not isinstance(data, dict):
            raise self.protocol_error("dispatch: expected a JSON object")
        return data

    async def workflow_runs(
        self, repository: str, workflow_id: str, created_since: str, pages: int = 3
    ) -> list[dict[str, Any]]:
        """The workflow's workflow_dispatch runs created since then, newest first."""
        path = f"{_repo_path(repository)}/actions/workflows/{quote(workflow_id, safe='')}/runs"
        runs: list[dict[str, Any]] = []
        for page in range(1, pages + 1):
            data = await self.object(
                "GET",
                path,
                params={
                    "event": "workflow_dispatch",
                    "created": f">={created_since}",
                    "per_page": str(_PAGE),
                    "page": str(page),
                },
            )
            found = data.get("workflow_runs")
            if not isinstance(found, list):
                raise self.protocol_error("workflow runs: expected a list")
            runs.extend(r for r in found if isinstance(r, dict))
            if len(found) < _PAGE:
                break
        return runs

    async def run(self, repository: str, run_id: str) -> dict[str, Any]:
        return await self.object(
            "GET", f"{_repo_path(repository)}/actions/runs/{quote(run_id, safe='')}"
        )

    async def jobs(self, repository: str, run_id: str) -> list[dict[str, Any]]:
        """Every job of the run's latest attempt."""
        path = f"{_repo_path(repository)}/actions/runs/{quote(run_id, safe='')}/jobs"
        jobs: list[dict[str, Any]] = []
        page = 1
        while True:
            data = await self.object(
                "GET",
                path,
                params={"filter": "latest", "per_page": str(_PAGE), "page": str(page)},
            )
            found = data.get("jobs")
            if not isinstance(found, list):
                raise self.protocol_error("run jobs: expected a list")
            jobs.extend(j for j in found if isinstance(j, dict))
            total = data.get("total_count")
            if len(found) < _PAGE or (isinstance(total, int) and len(jobs) >= total):
                return jobs
            page += 1

    async def job_log(self, repository: str, job_id: str) -> bytes:
        """A job's plain-text log. GitHub answers 302 to a short-lived download URL; httpx
        follows it and drops the Authorization header when the URL is on another host."""
        path = f"{_repo_path(repository)}/actions/jobs/{quote(job_id, safe='')}/logs"
        response = await self.send("GET", path, follow_redirects=True)
        return response.content

    async def cancel(self, repository: str, run_id: str, force: bool) -> None:
        action = "force-cancel" if force else "cancel"
        await self.send(
            "POST", f"{_repo_path(repository)}/actions/runs/{quote(run_id, safe='')}/{action}"
        )
