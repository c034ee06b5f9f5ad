"""Contract adapters: how the backend contract suite (``tests/test_backend_contract.py``) makes a
job of a given outcome on each backend.

One module per backend in this package; each defines an :class:`Adapter` subclass decorated with
:func:`register`. ``start()`` brings up the backend's stand-in (a fake server on loopback) and
``stop()`` takes it down; the suite calls them once per backend. A backend registered through the
``ascob.backends`` entry points without an adapter here fails the suite.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any, ClassVar

LINES = ["first line", "second line", "third line"]


class Adapter:
    """How to make a job of a given outcome on one backend."""

    backend_id: ClassVar[str]
    echoes_parameters: ClassVar[bool] = False

    def start(self) -> None:
        """Start the stand-in (and set the environment its configuration reads)."""

    def stop(self) -> None:
        """Stop what :meth:`start` started."""

    def config(self) -> dict[str, Any]:
        """The ASCOB_CONFIG content (as a dict) that points the backend at the stand-in."""
        return {}

    def labels(self, outcome: str, queued: bool = False) -> dict[str, str]:
        """Labels of a job printing LINES then ending ``succeeded``/``failed``, or ``hang``
        (runs until stopped); ``queued``: the job waits a moment before it starts."""
        raise NotImplementedError

    def refused_labels(self) -> dict[str, str]:
        """Labels the backend accepts at submission but whose job the backend refuses."""
        raise NotImplementedError

    def identity(self, keys: Mapping[str, str]) -> str:
        """What names the job on the backend's side."""
        raise NotImplementedError

    def invalid_labels(self) -> dict[str, str]:
        """Labels rejected at submission (SpecRejected)."""
        raise NotImplementedError


ADAPTERS: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    ADAPTERS[cls.backend_id] = cls
    return cls


def load_adapters() -> dict[str, type[Adapter]]:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return ADAPTERS
