"""The lock-store interface.

A run asks for all its keys at once; it gets all of them or none, and waits (holding nothing)
until it can have them. Waiters are served in arrival order per key. Every hold and every wait is
leased: the executor that runs the flow refreshes the lease, so a dead executor's locks free
themselves. Each grant carries a fencing token per key, increasing with every acquisition.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime


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

    async def waiting_for(self, run_id: int) -> list[int]:
        """The runs a waiting run waits for (holders and earlier waiters of its keys)."""
        found: list[int] = []
        for info in await self.snapshot():
            if run_id not in info.waiting:
                continue
            if info.holder is not None and info.holder != run_id:
                found.append(info.holder)
            found.extend(w for w in info.waiting[: info.waiting.index(run_id)])
        return sorted(set(found))

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def validate_key(key: str) -> str:
    """A lock key must be non-empty and at most 256 characters."""
    if not key or not key.strip():
        raise ValueError("lock key must not be empty")
    if len(key) > 256:
        raise ValueError(f"lock key is {len(key)} characters long; the limit is 256")
    return key
