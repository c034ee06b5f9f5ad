"""A thin async API client over ``httpx.AsyncClient``, and one client per instance and loop.

:class:`ApiClient` is what every HTTP backend's client derives from: it sends one request,
raises :class:`~backends.kit.errors.SystemHTTPError` for an error status (the system's own words,
read by :meth:`ApiClient.error_message`, which a client overrides for its API's error shape) and
:class:`~backends.kit.errors.SystemProtocolError` for an answer that is not the JSON it should
be. It takes an injectable ``transport=``, so tests talk to a stand-in without patching.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import httpx

from backends.kit.errors import SystemHTTPError, SystemProtocolError

__all__ = ["ApiClient", "ClientsPerLoop"]


class _Closable(Protocol):
    async def aclose(self) -> None: ...


C = TypeVar("C", bound=_Closable)


class ApiClient:
    """One system's API root. Subclasses set ``system`` (it names their errors), may set
    ``api_path`` (appended to the instance's URL) and ``headers`` (sent with every request), and
    add the API's calls. The token is sent as ``Authorization: Bearer``; override
    :meth:`token_headers` for another header."""

    system: ClassVar[str]
    api_path: ClassVar[str] = ""
    headers: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        auth: httpx.Auth | None = None,
        verify: Any = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        root = f"{url.rstrip('/')}/{self.api_path.strip('/')}".rstrip("/") + "/" if url else ""
        self._http = httpx.AsyncClient(
            base_url=root,
            headers={
                "Accept": "application/json",
                **self.headers,
                **({} if token is None else self.token_headers(token)),
            },
            auth=auth,
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

    def token_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def aclose(self) -> None:
        await self._http.aclose()

    def error_message(self, response: httpx.Response) -> str:
        """The system's words in an error answer (default: the start of the body)."""
        return response.text.strip()[:300] or response.reason_phrase

    def error(self, response: httpx.Response) -> SystemHTTPError:
        return SystemHTTPError(self.system, response.status_code, self.error_message(response))

    async def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request (``params``, ``json``, ``data``, ``headers``, ... as httpx takes them);
        an error status raises :meth:`error`."""
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise self.error(response)
        return response

    def decode(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise SystemProtocolError(self.system, f"{what}: malformed JSON") from exc

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.decode(await self.send(method, path, **kwargs), f"{method} {path}")

    async def object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A call whose answer is a JSON object."""
        data = await self.json(method, path, **kwargs)
        if not isinstance(data, dict):
            raise SystemProtocolError(self.system, f"{method} {path}: expected a JSON object")
        return data

    async def array(self, method: str, path: str, **kwargs: Any) -> list[dict[str, Any]]:
        """A call whose answer is a JSON array (its objects)."""
        data = await self.json(method, path, **kwargs)
        if not isinstance(data, list):
            raise SystemProtocolError(self.system, f"{method} {path}: expected a JSON array")
        return [item for item in data if isinstance(item, dict)]

    def protocol_error(self, message: str) -> SystemProtocolError:
        return SystemProtocolError(self.system, message)


class ClientsPerLoop(Generic[C]):
    """One client per instance and event loop: httpx clients belong to the loop that made them,
    and ASCOB calls a backend from the API's loop and from the executor's."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, C]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, instance: str, make: Callable[[], C]) -> C:
        clients = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        client = clients.get(instance)
        if client is None:
            client = clients[instance] = make()
        return client

    async def aclose(self) -> None:
        """Close the clients of the running loop."""
        for client in self._by_loop.pop(asyncio.get_running_loop(), {}).values():
            await client.aclose()
