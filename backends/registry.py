"""Finds backends through the ``ascob.backends`` entry-point group and picks one per spec."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from backends.base import BACKEND_ID_LABEL, Backend, BackendContext, SpecRejected

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ascob.backends"


class UnknownBackend(SpecRejected):
    """No loaded backend has the requested id, or none takes the spec."""


@dataclass(frozen=True)
class BackendState:
    id: str
    state: str  # "loaded" or "failed"
    error: str | None = None  # why it failed, or which of its instances are misconfigured
    instances: tuple[str, ...] = ()


class BackendRegistry:
    """The backends of this process. A backend that fails to load is reported, not fatal."""

    def __init__(self, backends: Mapping[str, Backend], states: list[BackendState]) -> None:
        self._backends = dict(backends)
        self.states = states

    @classmethod
    def load(cls, data_dir: Path, config: Mapping[str, Any] | None = None) -> BackendRegistry:
        """Build every backend registered under the entry-point group."""
        config = config or {}
        backends: dict[str, Backend] = {}
        states: list[BackendState] = []
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                backend_cls = ep.load()
                section = backend_cls.config_section or ep.name
                instances = config.get(section, {}) if isinstance(config, Mapping) else {}
                backend = backend_cls(
                    BackendContext(data_dir=data_dir / ep.name, instances=instances)
                )
                broken = "; ".join(  # loaded, but these instances refuse their specs
                    f"instance {name} is misconfigured: {why}"
                    for name, why in sorted(backend.broken_instances.items())
                )
            except Exception as exc:  # a broken plugin must not take the service down
                log.error("backend %s failed to load: %s", ep.name, exc, exc_info=True)
                states.append(BackendState(id=ep.name, state="failed", error=repr(exc)))
                continue
            backends[backend.id] = backend
            states.append(
                BackendState(
                    id=backend.id,
                    state="loaded",
                    error=broken or None,
                    instances=tuple(sorted(instances)),
                )
            )
        return cls(backends, states)

    def __contains__(self, backend_id: str) -> bool:
        return backend_id in self._backends

    def ids(self) -> list[str]:
        return list(self._backends)

    def get(self, backend_id: str) -> Backend:
        try:
            return self._backends[backend_id]
        except KeyError:
            raise UnknownBackend(f"unknown backend {backend_id!r}") from None

    def select(self, labels: Mapping[str, str], description: str | None) -> Backend:
        """The backend a spec runs on: the one its label names, else the first that accepts it."""
        wanted = labels.get(BACKEND_ID_LABEL)
        if wanted:
            backend = self.get(wanted)
        else:
            found = [b for b in self._backends.values() if b.accepts(labels, description)]
            if not found:
                raise UnknownBackend(
                    f"no backend accepts this job spec: set the label {BACKEND_ID_LABEL} "
                    f"(one of {', '.join(self._backends) or 'none loaded'})"
                )
            backend = found[0]
        backend.validate(labels)
        return backend

    async def aclose(self) -> None:
        for backend in self._backends.values():
            try:
                await backend.aclose()
            except Exception:
                log.warning("closing backend %s failed", backend.id, exc_info=True)
