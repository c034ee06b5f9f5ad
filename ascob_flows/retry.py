"""One retry policy for the engine: capped exponential backoff (:class:`Backoff`), and
:func:`retry` for a call that may fail for a while. Every retry loop of the lock stores and the
flow uses these, with its own named policy, instead of constants of its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays ``first``, 2 x ``first``, 4 x ``first``, ... capped at ``cap`` seconds."""

    first: float
    cap: float

    def delay(self, attempt: int) -> float:
        """The delay before try ``attempt + 1`` (attempt 0 is the first failure)."""
        return min(self.cap, self.first * 2 ** min(attempt, 30))


LOCK_STORE = Backoff(first=0.2, cap=5.0)
"""A lock store that does not answer (etcd restarting, the database busy)."""

DISPATCH = Backoff(first=2.0, cap=15.0)
"""A backend that is unavailable before it got the job: the job is sent again after this."""

BACKEND = Backoff(first=1.0, cap=60.0)
"""A backend that does not answer while a run is followed (scaled by the poll interval)."""


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    on: tuple[type[BaseException], ...],
    unless: tuple[type[BaseException], ...] = (),
    attempts: int | None = None,
    backoff: Backoff = LOCK_STORE,
    what: str = "call",
) -> T:
    """Await ``call()`` until it succeeds; retry on ``on`` (not on ``unless``), at most
    ``attempts`` tries (None: until it succeeds), then raise the last error."""
    attempt = 0
    while True:
        try:
            return await call()
        except unless:
            raise
        except on as exc:
            if attempts is not None and attempt + 1 >= attempts:
                raise
            delay = backoff.delay(attempt)
            log.warning("%s failed (%r); again in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
            attempt += 1
