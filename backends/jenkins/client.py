"""A thin async client for the Jenkins remote access API (JSON), over ``httpx.AsyncClient``.

It speaks only HTTP; what the answers mean for ASCOB is decided in :mod:`backends.jenkins`.
Every call raises the kit's ``SystemHTTPError`` (an answer with an error status),
``SystemProtocolError`` (an answer that is not what the API documents), or an
``httpx.HTTPError`` (no answer).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import httpx

from backends.kit import ApiClient, SystemHTTPError

__all__ = ["JenkinsClient", "job_url_path"]

_QUEUE_ITEM = re.compile(r"/queue/item/(\d+)/?$")


def job_url_path(project: str) -> str:
    """``a/b`` (a job ``b`` in the folder ``a``) -> ``job/a/job/b``."""
    segments = [s for s in project.strip("/").split("/") if s]
    return "/".join(f"job/{quote(s, safe='')}" for s in segments)


def _describe(response: httpx.Response) -> str:
    """A short message from an error page (Jenkins answers HTML or text)."""
    text = response.text or response.reason_phrase
    title = re.search(r"<title>(.*?)</title>", text, re.S | re.I)
    if title:
        text = title.group(1)
    text = re.sub(r"<[^>]+>", " ", text)
    return " ".join(text.split())[:300] or response.reason_phrase


class JenkinsClient(ApiClient):
    """One Jenkins server, with basic ``auth`` (a user and its API token). Keeps its cookies
    (Jenkins ties a CSRF crumb to the session)."""

    system = "jenkins"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._crumb: dict[str, str] | None = None
        self._crumb_known = False

    def error_message(self, response: httpx.Response) -> str:
        return _describe(response)

    async def _get_json(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.object("GET", path, params=params)

    async def ensure_crumb(self) -> None:
        """Learn whether the server wants a crumb (before a trigger, so a failure is certain)."""
        await self._crumb_header()

    async def _crumb_header(self, refresh: bool = False) -> dict[str, str]:
        """The CSRF crumb header, when the server issues crumbs (404: crumbs are off)."""
        if refresh or not self._crumb_known:
            response = await self._http.get("crumbIssuer/api/json")
            if response.status_code == 404:
                self._crumb = None
            elif response.status_code >= 400:
                raise self.error(response)
            else:
                try:
                    data = response.json()
                    self._crumb = {str(data["crumbRequestField"]): str(data["crumb"])}
                except (ValueError, KeyError, TypeError) as exc:
                    raise self.protocol_error("crumbIssuer: malformed answer") from exc
            self._crumb_known = True
        return dict(self._crumb or {})

    async def post(
        self, path: str, data: dict[str, str] | None = None, params: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST with the crumb; a refused crumb (403) is fetched again once (nothing ran)."""
        response = await self._http.post(
            path, data=data, params=params, headers=await self._crumb_header()
        )
        if response.status_code == 403 and "crumb" in response.text.lower():
            response = await self._http.post(
                path, data=data, params=params, headers=await self._crumb_header(refresh=True)
            )
        if response.status_code >= 400:
            raise self.error(response)
        return response

    # ------------------------------------------------------------------ API

    async def get_job(self, project: str) -> dict[str, Any]:
        """The job's definition: name, buildable, parameter definitions (a job without
        parameters has no ``ParametersDefinitionProperty``)."""
        return await self._get_json(
            f"{job_url_path(project)}/api/json",
            {"tree": "name,fullName,url,buildable,property[parameterDefinitions[name]]"},
        )

    async def build_with_parameters(self, project: str, parameters: dict[str, str]) -> int:
        """Trigger a build of a parameterized job; the queue item id from ``Location``."""
        return self._queue_id(
            "buildWithParameters",
            await self.post(f"{job_url_path(project)}/buildWithParameters", data=parameters),
        )

    async def build(self, project: str) -> int:
        """Trigger a build of a job without parameters; the queue item id from ``Location``."""
        return self._queue_id("build", await self.post(f"{job_url_path(project)}/build"))

    def _queue_id(self, what: str, response: httpx.Response) -> int:
        location = response.headers.get("location", "")
        match = _QUEUE_ITEM.search(location)
        if not match:
            raise self.protocol_error(
                f"{what} answered {response.status_code} without a queue item "
                f"location ({location!r})"
            )
        return int(match.group(1))

    async def queue_item(self, queue_id: int) -> dict[str, Any] | None:
        """The queue item, or None once Jenkins has forgotten it (404)."""
        try:
            return await self._get_json(f"queue/item/{queue_id}/api/json")
        except SystemHTTPError as exc:
            if exc.status_code == 404:
                return None
            raise

    async def queue_items(self) -> list[dict[str, Any]]:
        """The items in the queue (waiting, blocked or buildable), each with its ``task``."""
        data = await self._get_json("queue/api/json", {"tree": "items[id,params,why,task[url]]"})
        items = data.get("items") or []
        if not isinstance(items, list):
            raise self.protocol_error("queue items: expected a list")
        return [i for i in items if isinstance(i, dict)]

    async def cancel_queue_item(self, queue_id: int) -> None:
        await self.post("queue/cancelItem", params={"id": str(queue_id)})

    async def get_build(self, project: str, number: int) -> dict[str, Any]:
        return await self._get_json(
            f"{job_url_path(project)}/{number}/api/json",
            {"tree": "number,url,building,result,actions[parameters[name,value]]"},
        )

    async def recent_builds(self, project: str) -> list[dict[str, Any]]:
        data = await self._get_json(
            f"{job_url_path(project)}/api/json",
            {"tree": "builds[number,url,queueId,actions[parameters[name,value]]]{0,100}"},
        )
        builds = data.get("builds") or []
        if not isinstance(builds, list):
            raise self.protocol_error("job builds: expected a list")
        return [b for b in builds if isinstance(b, dict)]

    async def progressive_text(
        self, project: str, number: int, start: int
    ) -> tuple[str, int, bool]:
        """Console text from byte ``start``: the text, the next start, whether more comes."""
        response = await self.send(
            "GET",
            f"{job_url_path(project)}/{number}/logText/progressiveText",
            params={"start": str(start)},
        )
        size = response.headers.get("x-text-size")
        try:
            next_start = int(size) if size is not None else start + len(response.content)
        except ValueError as exc:
            raise self.protocol_error(f"X-Text-Size {size!r} is not a number") from exc
        more = response.headers.get("x-more-data", "").lower() == "true"
        return response.content.decode("utf-8", errors="replace"), next_start, more

    async def build_action(self, project: str, number: int, action: str) -> bool:
        """POST ``stop``, ``term`` or ``kill`` to a build; False if the build does not offer it."""
        try:
            await self.post(f"{job_url_path(project)}/{number}/{action}")
        except SystemHTTPError as exc:
            if exc.status_code in (404, 405):
                return False
            raise
        return True
