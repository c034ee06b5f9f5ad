"""Automation backends and their registry. Depends on nothing else of ASCOB.

The contract (:mod:`backends.base`) and the registry are what other packages import from here;
:mod:`backends.kit` is what a backend is built with.
"""

from backends.base import *  # noqa: F403 - the contract is this package's surface
from backends.base import __all__ as _contract
from backends.registry import BackendRegistry, UnknownBackend

__all__ = [*_contract, "BackendRegistry", "UnknownBackend"]
