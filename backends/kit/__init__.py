"""The backend kit: what every backend that talks to named instances of a system shares.

- :class:`KitBackend`: the base class (instances from the config, a client per instance and
  event loop, the instance label, identification keys -> instance and client);
- :class:`Instances`: the instances, each parsed on its own (a broken one is reported and refuses
  its specs; the others work), :class:`RestInstance` (url, token_env, timeout) and
  :func:`secret_from_env`, :func:`required` (identification keys, or JobNotFound);
- :class:`ApiClient`: a thin httpx client raising the one error pair, :class:`SystemHTTPError`
  and :class:`SystemProtocolError`, which carry the system's name; :class:`ClientsPerLoop`;
- :func:`before_sending` and :func:`following`: what those errors mean before the job is sent
  and while it is followed; :func:`not_sent`, :func:`may_have_arrived`, :func:`describe`.

It also re-exports the contract (:mod:`backends.base`: ``Backend``, ``Job``, ``StatusReport``,
the exception tree with ``OutcomeUnknown``, ...), so that a backend needs one import,
``from backends import kit``. See docs/backends.md, "Writing a backend".
"""

from backends.base import *  # noqa: F403 - the contract, re-exported
from backends.base import __all__ as _contract
from backends.kit.backend import KitBackend
from backends.kit.client import ApiClient, ClientsPerLoop
from backends.kit.errors import (
    CALL_ERRORS,
    SystemHTTPError,
    SystemProtocolError,
    before_sending,
    describe,
    following,
    may_have_arrived,
    not_sent,
)
from backends.kit.instances import Instances, RestInstance, required, secret_from_env

__all__ = [
    *_contract,
    "CALL_ERRORS",
    "ApiClient",
    "ClientsPerLoop",
    "Instances",
    "KitBackend",
    "RestInstance",
    "SystemHTTPError",
    "SystemProtocolError",
    "before_sending",
    "describe",
    "following",
    "may_have_arrived",
    "not_sent",
    "required",
    "secret_from_env",
]
