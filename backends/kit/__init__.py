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

The outcome of a submission that cannot be known is :class:`backends.OutcomeUnknown`, part of the
contract itself (:mod:`backends.base`). See docs/backends.md, "Writing a backend".
"""

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
