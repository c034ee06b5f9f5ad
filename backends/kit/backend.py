"""The base class of a backend of named instances with one API client per instance and loop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

import httpx

from backends.base import (
    Backend,
    BackendContext,
    BackendStatus,
    BackendUnavailable,
    SubmitRefused,
)
from backends.kit.client import ClientsPerLoop
from backends.kit.instances import Instances, _Named

__all__ = ["KitBackend", "statuses"]

N = TypeVar("N", bound=_Named)
C = TypeVar("C", bound=Any)


def statuses(
    *,
    queued: tuple[str, ...] = (),
    running: tuple[str, ...] = (),
    succeeded: tuple[str, ...] = (),
    failed: tuple[str, ...] = (),
    aborted: tuple[str, ...] = (),
) -> dict[str, BackendStatus]:
    """A system's status words -> ASCOB's, written per ASCOB status."""
    table = {
        BackendStatus.QUEUED: queued,
        BackendStatus.RUNNING: running,
        BackendStatus.SUCCEEDED: succeeded,
        BackendStatus.FAILED: failed,
        BackendStatus.ABORTED: aborted,
    }
    return {word: status for status, words in table.items() for word in words}


class KitBackend(Backend, Generic[N, C]):
    """A backend whose instances are the sub-tables of its ``config_section``, each reached
    through its own client (one per instance and event loop).

    A subclass sets ``id``, ``config_section``, ``takes`` (the labels that make a spec without
    a backend id its own), ``instance_type`` (a :class:`~backends.kit.RestInstance` with its
    ``kind``, parsed with ``instance_type.parse(name, table)``) and ``client_type`` (made with
    ``client_type(url, token, timeout=..., transport=...)``; override :meth:`make_client` for
    more), and implements ``submit`` and ``status`` (and ``stop``, ``output``). It gets
    ``self.instances`` (:class:`~backends.kit.Instances`), :meth:`validate` checking the
    instance label, :meth:`client`, :meth:`known` (the instance and client identification keys
    name) and :meth:`aclose`; :meth:`setup` makes its own per-process state.
    """

    config_section: ClassVar[str]
    can_stop: ClassVar[bool] = True
    takes: ClassVar[tuple[str, ...]] = ()
    instance_type: ClassVar[Any] = None
    client_type: ClassVar[Any] = None

    def __init__(
        self, context: BackendContext, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        super().__init__(context)
        self.instances: Instances[N] = Instances(
            self.config_section, context.instances, self.parse_instance
        )
        self.transport = transport
        self._clients: ClientsPerLoop[C] = ClientsPerLoop()
        self.setup()

    def setup(self) -> None:
        """Make the backend's own state (caches), once per process."""

    def parse_instance(self, name: str, raw: Any) -> N:
        """One instance from its table; ValueError (or TypeError) says what is wrong."""
        instance: N = self.instance_type.parse(name, raw)
        return instance

    def make_client(self, instance: N) -> C:
        """A new client of the instance (SubmitRefused when its secret is missing)."""
        settings: Any = instance
        client: C = self.client_type(
            settings.url, settings.token(), timeout=settings.timeout, transport=self.transport
        )
        return client

    @property
    def broken_instances(self) -> Mapping[str, str]:
        return self.instances.broken

    def accepts(self, labels: Mapping[str, str], description: str | None) -> bool:
        return any(label in labels for label in self.takes)

    def validate(self, labels: Mapping[str, str]) -> None:
        self.instances.for_labels(labels)

    def client(self, instance: N) -> C:
        return self._clients.get(instance.name, lambda: self.make_client(instance))

    def known(self, keys: Mapping[str, str]) -> tuple[N, C]:
        """The instance and client the identification keys name. A client that cannot be made
        now (a missing secret) may be later: BackendUnavailable."""
        instance = self.instances.for_keys(keys)
        try:
            return instance, self.client(instance)
        except SubmitRefused as exc:
            raise BackendUnavailable(str(exc)) from exc

    async def aclose(self) -> None:
        await self._clients.aclose()
