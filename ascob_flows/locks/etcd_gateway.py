"""etcd's v3 JSON gateway (``/v3/...``) over httpx, as the v3 lock store uses it: calls that fail
over between endpoints, leases, range reads, transaction operations and the watch stream.

Errors: :class:`EtcdError` (etcd answered with an error) and
:class:`~ascob_flows.locks.LockStoreUnavailable` (no answer, or no leader).
"""

from __future__ import annotations

import asyncio
import base64
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from ascob_flows.locks.base import LockError, LockStoreUnavailable

__all__ = ["EtcdError", "EtcdGateway", "b64", "unb64"]

NOT_FOUND = 5  # gRPC code: a lease or key that is gone already
UNAVAILABLE = 14  # gRPC code: no leader, stopping


class EtcdError(LockError):
    """etcd answered a request with an error."""

    def __init__(self, status: int, code: int | None, message: str) -> None:
        super().__init__(f"etcd error {code} (HTTP {status}): {message}")
        self.status, self.code, self.message = status, code, message


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def unb64(value: str) -> str:
    return base64.b64decode(value).decode()


def prefix_range(prefix: str) -> dict[str, str]:
    """The ``key``/``range_end`` pair that selects every key under ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return {"key": b64(prefix), "range_end": base64.b64encode(bytes(raw)).decode()}


def absent(key: str) -> dict[str, Any]:
    """A transaction compare: ``key`` does not exist."""
    return created_at(key, 0)


def created_at(key: str, revision: int) -> dict[str, Any]:
    """A transaction compare: ``key`` was created at ``revision`` (still the same key)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": revision}


def put(key: str, value: str, lease: int) -> dict[str, Any]:
    """A transaction operation: put ``key`` on ``lease``."""
    return {"request_put": {"key": b64(key), "value": b64(value), "lease": lease}}


def delete(key: str) -> dict[str, Any]:
    """A transaction operation: delete ``key``."""
    return {"request_delete_range": {"key": b64(key)}}


class EtcdGateway:
    """One etcd cluster through its JSON gateway: a comma-separated list of endpoints, tried in
    turn when one refuses a connection. One httpx client per event loop (``ascob serve`` shares
    the lock store between the API's loop and the executor's)."""

    def __init__(
        self,
        url: str,
        *,
        api_prefix: str = "/v3",
        transport: httpx.AsyncBaseTransport | None = None,
        request_timeout: float = 5.0,
    ) -> None:
        self.endpoints = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not self.endpoints:
            raise ValueError("no etcd endpoint in the URL")
        self.api_prefix = api_prefix
        self.request_timeout = request_timeout
        self._transport = transport
        self._endpoint = 0
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]
        self._clients = weakref.WeakKeyDictionary()

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                transport=self._transport, timeout=httpx.Timeout(self.request_timeout)
            )
            self._clients[loop] = client
        return client

    def _url(self, path: str) -> str:
        return f"{self.endpoints[self._endpoint]}{self.api_prefix}{path}"

    def next_endpoint(self) -> None:
        self._endpoint = (self._endpoint + 1) % len(self.endpoints)

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for tried in range(len(self.endpoints)):
            try:
                response = await self._http().post(self._url(path), json=body)
                break
            except httpx.TransportError as exc:
                self.next_endpoint()
                # a refused connection sent nothing: the next member may take the same call
                # (even a transaction); any other failure may have reached etcd: let the
                # caller decide
                if isinstance(exc, httpx.ConnectError) and tried + 1 < len(self.endpoints):
                    continue
                raise LockStoreUnavailable(
                    f"etcd at {self.endpoints} unreachable: {exc!r}"
                ) from exc
        if response.status_code >= 500 and response.status_code != 501:
            raise LockStoreUnavailable(f"etcd answered HTTP {response.status_code}")
        try:
            payload = response.json()
        except ValueError as exc:
            raise EtcdError(response.status_code, None, response.text[:200]) from exc
        if response.status_code != 200 or "error" in payload:
            if payload.get("code") == UNAVAILABLE:
                raise LockStoreUnavailable(payload.get("error", "etcd unavailable"))
            raise EtcdError(response.status_code, payload.get("code"), payload.get("error", ""))
        return dict(payload)

    async def txn(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return await self.call("/kv/txn", {"compare": compare, "success": success})

    async def grant_lease(self, ttl: int) -> int:
        payload = await self.call("/lease/grant", {"TTL": ttl, "ID": 0})
        return int(payload["ID"])

    async def renew(self, lease: int) -> bool:
        """One keepalive of the lease; False if it ran out (etcd answers a TTL of 0)."""
        payload = await self.call("/lease/keepalive", {"ID": lease})
        return bool(int(payload.get("result", {}).get("TTL", 0)))

    async def revoke(self, lease: int) -> None:
        try:
            await self.call("/lease/revoke", {"ID": lease})
        except EtcdError as exc:
            if exc.code != NOT_FOUND:
                raise

    @asynccontextmanager
    async def watch(self, request: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        """The watch stream of ``request`` (a ``create_request``), read line by line."""
        async with self._http().stream(
            "POST",
            self._url("/watch"),
            json={"create_request": request},
            timeout=httpx.Timeout(self.request_timeout, read=None),
        ) as response:
            if response.status_code != 200:
                raise LockStoreUnavailable(f"watch answered HTTP {response.status_code}")
            yield response

    async def aclose(self) -> None:
        """Close this event loop's client (another loop's belongs to that loop)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
