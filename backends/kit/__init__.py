"""The backend kit: what every backend that talks to named instances of a system shares.

- :class:`KitBackend`: the base class (instances from the config, a client per instance and
  event loop, the instance label, identification keys -> instance and client);
- :class:`Instances`: the instances, each parsed on its own (a broken one is reported and refuses
  its specs; the others work), :class:`RestInstance` (url, token_env, timeout) and
  :func:`secret_from_env`, :func:`required` (identification keys, or JobNotFound),
  :func:`statuses` (a system's status words -> ASCOB's);
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
from backends.kit import backend, client, errors, instances
from backends.kit.backend import *  # noqa: F403
from backends.kit.client import *  # noqa: F403
from backends.kit.errors import *  # noqa: F403
from backends.kit.instances import *  # noqa: F403

__all__ = [*_contract, *backend.__all__, *client.__all__, *errors.__all__, *instances.__all__]
