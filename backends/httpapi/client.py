"""A thin async HTTP client for ``httpBackend``, a kit :class:`~backends.kit.ApiClient`.

The service's URLs come whole from the instance's templates, so the client has no base URL: it
sends one request and hands back the answer. Errors are the caller's to interpret (a start and a
poll read the same failure differently), so :meth:`HttpServiceClient.exchange` raises only
``httpx.HTTPError`` for transport failures and returns every answer, whatever its status.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from backends.kit import ApiClient

__all__ = ["HttpServiceClient", "snippet"]


def snippet(response: httpx.Response, limit: int = 300) -> str:
    """The start of an answer's body, on one line, for an error message."""
    text = " ".join(response.text.split())
    if len(text) > limit:
        text = text[:limit] + "…"
    return text or response.reason_phrase


class HttpServiceClient(ApiClient):
    """One configured service instance."""

    system = "http"

    async def exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
    ) -> httpx.Response:
        extra = httpx.Headers(dict(headers))
        if body is not None and "content-type" not in extra:
            extra["Content-Type"] = "application/json"
        return await self._http.request(method, url, headers=extra, content=body)
