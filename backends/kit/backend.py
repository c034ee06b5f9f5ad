"""The base class of a backend of named instances with one API client per instance and loop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

import httpx

from backends.base import Backend, BackendContext, BackendUnavailable, SubmitRefused
from backends.kit.client import ClientsPerLoop
from backends.kit.instances import Instances, _Named

__all__ = ["KitBackend"]

N = TypeVar("N", bound=_Named)
C = TypeVar("C", bound=Any)


class KitBackend(Backend, Generic[N, C]):
    """A backend whose instances are the sub-tables of its ``config_section``, each reached
    through a client made by :meth:`make_client` (one per instance and event loop).

    A subclass sets ``id`` and ``config_section``, and implements :meth:`parse_instance`,
    :meth:`make_client` and the contract's ``accepts``, ``submit`` and ``status``. What it gets:
    ``self.instances`` (an :class:`~backends.kit.Instances`), :meth:`validate` checking the
    instance label, :meth:`client`, :meth:`known` (the instance and client identification keys
    name), and :meth:`aclose`.
    """

    config_section: ClassVar[str]

    def __init__(
        self, context: BackendContext, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        super().__init__(context)
        self.instances: Instances[N] = Instances(
            self.config_section, context.instances, self.parse_instance
        )
        self.transport = transport
        self._clients: ClientsPerLoop[C] = ClientsPerLoop()

    def parse_instance(self, name: str, raw: Any) -> N:
        """One instance from its table; ValueError (or TypeError) says what is wrong."""
        raise NotImplementedError

    def make_client(self, instance: N) -> C:
        """A new client of the instance (SubmitRefused when its secret is missing)."""
        raise NotImplementedError

    @property
    def broken_instances(self) -> Mapping[str, str]:
        return self.instances.broken

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
