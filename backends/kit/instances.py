"""A backend's instances: the sub-tables of its section of the ASCOB_CONFIG file.

:class:`Instances` parses each sub-table on its own. One that does not parse is *broken*: it is
logged at start, reported by the registry (``GET /api/backends``) and refuses the specs that
select it, with the reason; the other instances keep working. It also answers the two questions
every backend asks: which instance a spec's labels select (the ``<section>_instance`` label, which
may be left out when one instance is configured), and which instance identification keys name
(the ``<section>Instance`` key).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from backends.base import BackendUnavailable, JobNotFound, SpecRejected, SubmitRefused

__all__ = ["Instances", "RestInstance", "required", "secret_from_env"]

log = logging.getLogger(__name__)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)

PARSE_ERRORS = (ValueError, TypeError, LookupError)


def secret_from_env(
    kind: str, instance: str, variable: str | None, what: str = "its API token"
) -> str | None:
    """The value of the environment variable an instance's config names (its API token)."""
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise SubmitRefused(
            f"{kind} instance {instance!r}: environment variable {variable} ({what}) is not set"
        )
    return value


def required(keys: Mapping[str, str], *names: str) -> list[str]:
    """The values of these identification keys; JobNotFound names the first one missing."""
    missing = [name for name in names if name not in keys]
    if missing:
        raise JobNotFound(f"identification keys carry no {missing[0]}")
    return [keys[name] for name in names]


class Instances(MutableMapping[str, N]):
    """The usable instances by name (a mapping), and the ``broken`` ones with their reason."""

    def __init__(
        self,
        section: str,
        raw: Mapping[str, Any],
        parse: Callable[[str, Any], N],
        label: str | None = None,
    ) -> None:
        self.section = section
        self.label = label or f"{section}_instance"
        self.key = f"{section}Instance"
        self._usable: dict[str, N] = {}
        self.broken: dict[str, str] = {}
        for name, table in dict(raw).items():
            try:
                self._usable[name] = parse(name, table)
            except PARSE_ERRORS as exc:
                log.error("%s instance %s is misconfigured: %s", section, name, exc)
                self.broken[name] = str(exc) or type(exc).__name__

    def __getitem__(self, name: str) -> N:
        return self._usable[name]

    def __setitem__(self, name: str, instance: N) -> None:
        self.broken.pop(name, None)
        self._usable[name] = instance

    def __delitem__(self, name: str) -> None:
        del self._usable[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._usable)

    def __len__(self) -> int:
        return len(self._usable)

    def for_labels(self, labels: Mapping[str, str]) -> N:
        """The instance a spec's labels select; SpecRejected (400) if none is."""
        name = labels.get(self.label)
        every = sorted([*self._usable, *self.broken])
        configured = ", ".join(every) or "none"
        if not name:
            if len(every) != 1:
                raise SpecRejected(f"label {self.label} is required (configured: {configured})")
            name = every[0]
        if name in self.broken:
            raise SpecRejected(
                f"{self.section} instance {name!r} is misconfigured: {self.broken[name]}"
            )
        if name not in self._usable:
            raise SpecRejected(
                f"{self.label}={name!r} is not configured (configured: {configured}; "
                f"see [{self.section}.<name>] in the ASCOB_CONFIG file)"
            )
        return self._usable[name]

    def for_keys(self, keys: Mapping[str, str]) -> N:
        """The instance identification keys name. Gone from the configuration, it may come back
        (BackendUnavailable: ASCOB asks again later)."""
        name = keys.get(self.key)
        if name is None:
            raise JobNotFound(f"identification keys carry no {self.key}")
        if name in self.broken:
            raise BackendUnavailable(
                f"{self.section} instance {name!r} is misconfigured: {self.broken[name]}"
            )
        if name not in self._usable:
            raise BackendUnavailable(f"{self.section} instance {name!r} is no longer configured")
        return self._usable[name]


@dataclass(frozen=True)
class RestInstance:
    """What an instance of a REST backend has in common: its URL, the environment variable that
    holds its API token, and the timeout of one call. Subclasses set ``kind`` (the config
    section) and add their own settings, with defaults."""

    kind: ClassVar[str]
    name: str
    url: str
    token_env: str | None = None
    timeout: float = 30.0

    @classmethod
    def common(cls, name: str, raw: Any, default_url: str | None = None) -> dict[str, Any]:
        """The common settings of ``[<kind>.<name>]``, checked (ValueError)."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"[{cls.kind}.{name}] must be a table")
        url = raw.get("url") or default_url
        if not url:
            raise ValueError(f"[{cls.kind}.{name}] needs a url")
        return {
            "name": name,
            "url": str(url),
            "token_env": str(raw["token_env"]) if raw.get("token_env") else None,
            "timeout": float(raw.get("timeout", 30.0)),
        }

    @classmethod
    def parse(cls: type[R], name: str, raw: Any) -> R:
        """An instance with the common settings only (override to read more)."""
        return cls(**cls.common(name, raw))

    def token(self) -> str | None:
        """The API token (SubmitRefused when its variable is not set)."""
        return secret_from_env(self.kind, self.name, self.token_env)


R = TypeVar("R", bound=RestInstance)
