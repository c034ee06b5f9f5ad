"""The lock-store interface.

A run asks for all its keys at once; it gets all of them or none, and waits (holding nothing)
until it can have them. Waiters are served by the fair rule of
:mod:`ascob_flows.locks.queueing`: a later run may take free keys that an earlier waiter also
wants only while that waiter is still blocked by a hold granted before it queued; after that its
keys are reserved for it, in arrival order. Every hold and every wait is leased: the executor that
runs the flow refreshes the lease, so a dead executor's locks free themselves. Each grant carries
a fencing token per key, increasing with every acquisition.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

RELEASE_TRIES = 3  # a release that still fails is left to the lease
HOLDS_TRIES = 4  # then holds() answers False: the flow waits again rather than dispatch blind


class LockError(Exception):
    """Base class of lock-store errors."""


class LockStoreUnavailable(LockError):
    """The store cannot be reached; callers wait and try again."""


@dataclass(frozen=True)
class Grant:
    run_id: int
    keys: tuple[str, ...]
    tokens: dict[str, int] = field(default_factory=dict)

    @property
    def fencing_token(self) -> int:
        return max(self.tokens.values(), default=0)


@dataclass(frozen=True)
class LockInfo:
    key: str
    holder: int | None
    since: datetime | None
    token: int | None
    waiting: tuple[int, ...] = ()
    reserved_for: int | None = None
    """The earliest waiter the key is reserved for (no later run may take it)."""
    blockers: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    """For each waiter of the key: the runs it waits for (holders and earlier reservations)."""


class LockStore(abc.ABC):
    """One implementation per storage; all pass ``tests/test_lock_contract.py``."""

    name: str = "abstract"

    def __init__(self, lease_seconds: float = 30.0) -> None:
        self.lease_seconds = lease_seconds

    @abc.abstractmethod
    async def acquire(self, run_id: int, keys: Sequence[str]) -> Grant:
        """Wait until the run holds every key; idempotent for a run that already holds them.

        Cancelling the call leaves the run's place in the queue until its lease runs out or
        :meth:`release` is called.
        """

    @abc.abstractmethod
    async def release(self, run_id: int) -> None:
        """Drop every hold and every wait of the run. Idempotent."""

    @abc.abstractmethod
    async def holds(self, run_id: int, keys: Sequence[str]) -> bool:
        """Whether the run still holds every key (its lease has not run out)."""

    @abc.abstractmethod
    async def keepalive(self, run_ids: Iterable[int]) -> None:
        """Renew the leases of these runs' holds and waits."""

    @abc.abstractmethod
    async def snapshot(self) -> list[LockInfo]:
        """Every held or awaited key, its holder and its queue."""

    @abc.abstractmethod
    async def try_acquire(self, run_id: int, keys: Sequence[str]) -> Grant | None:
        """Take every key now if each is free or the run's own, regardless of the queue (a
        resumed run whose job runs already); else None. Never queues, never waits."""

    def forget(self, run_id: int) -> None:  # noqa: B027 - optional hook
        """This process no longer follows the run (another executor took it over): stop
        renewing its lease, and never give its keys back on its behalf (a grant that arrives for
        its cancelled wait is left to the new owner). Its holds and its place stay."""

    async def waiting_for(self, run_id: int) -> list[int]:
        """The runs a waiting run waits for (holders of its keys, and earlier waiters its keys
        are reserved for)."""
        found: set[int] = set()
        for info in await self.snapshot():
            found.update(info.blockers.get(run_id, ()))
        return sorted(found)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def validate_key(key: str) -> str:
    """A lock key must be non-empty and at most 256 characters."""
    if not key or not key.strip():
        raise ValueError("lock key must not be empty")
    if len(key) > 256:
        raise ValueError(f"lock key is {len(key)} characters long; the limit is 256")
    return key
