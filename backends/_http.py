"""Plumbing shared by the backends that talk HTTP to instances named in ASCOB_CONFIG."""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import httpx

from backends.base import BackendError, BackendUnavailable, SubmitRefused


class _Closable(Protocol):
    async def aclose(self) -> None: ...


C = TypeVar("C", bound=_Closable)


def secret_from_env(kind: str, instance: str, variable: str | None) -> str | None:
    """The instance's API token, read from the environment variable its config names."""
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise SubmitRefused(
            f"{kind} instance {instance!r}: environment variable {variable} "
            "(its API token) is not set"
        )
    return value


def describe(exc: Exception) -> str:
    """An HTTP failure in a few words, also when the exception has no message."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def not_sent(exc: Exception, message: str) -> BackendError:
    """A call before the job was sent failed: ``BackendUnavailable`` when it may pass (a 5xx, no
    answer, no connection; ASCOB sends the job again for ASCOB_DISPATCH_RETRY_SECONDS),
    ``SubmitRefused`` otherwise. Raise it ``from exc``."""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, httpx.TransportError) or (isinstance(status, int) and status >= 500):
        return BackendUnavailable(message)
    return SubmitRefused(message)


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
