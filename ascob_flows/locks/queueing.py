"""What the etcd lock stores share: key-name encoding, the fair grant rule, and the grant pump.

The grant rule is the one the SQL store applies: waiters are taken in global arrival order; a
waiter may take its keys when every key is free (or already its own) and no *earlier* waiter wants
any of them. The earliest waiter of any group of conflicting waiters is therefore always
eligible, so there is no deadlock, and a run that needs {A, B} is never overtaken by a later run
that needs only {A}.

The pump is one task per store and event loop: it runs a grant round for this process's waiters
whenever something may have been freed (a watch event, a local release) and, as a safety net,
every ``poll_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ascob_flows.locks.base import Grant, LockInfo

log = logging.getLogger(__name__)

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")


def encode_key(key: str) -> str:
    """A lock key as one path segment that etcd (v2 and v3) stores as given.

    Letters, digits, ``-`` and ``.`` stay; every other UTF-8 byte becomes ``_XX``. The ``k-``
    prefix keeps the segment from being ``.``/``..`` or starting with ``_`` (hidden in v2).
    """
    out = ["k-"]
    for ch in key:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"_{b:02X}" for b in ch.encode())
    return "".join(out)


def decode_key(segment: str) -> str:
    """The inverse of :func:`encode_key`."""
    if not segment.startswith("k-"):
        raise ValueError(f"not an encoded lock key: {segment!r}")
    body = segment[2:]
    raw = bytearray()
    i = 0
    while i < len(body):
        if body[i] == "_":
            raw.append(int(body[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(body[i].encode())
            i += 1
    return raw.decode()


@dataclass(frozen=True)
class Waiter:
    """A run in the global queue; ``order`` is its arrival (a revision or an index)."""

    order: int
    run_id: int
    keys: tuple[str, ...]


def eligible(
    waiters: Iterable[Waiter], holders: Mapping[str, int], wanted: Iterable[int]
) -> list[Waiter]:
    """The waiters among ``wanted`` runs that may take their keys now, in arrival order."""
    wanted = set(wanted)
    blocked: set[str] = set()
    out: list[Waiter] = []
    for w in sorted(waiters, key=lambda w: w.order):
        keys = set(w.keys)
        free = not (keys & blocked) and all(holders.get(k, w.run_id) == w.run_id for k in keys)
        if free and w.run_id in wanted:
            out.append(w)
        blocked |= keys
    return out


Round = Callable[[dict[int, tuple[str, ...]]], Awaitable[dict[int, Grant]]]


def lock_infos(
    holds: Mapping[str, tuple[int, datetime | None, int | None]],
    waiters: Iterable[tuple[int, Iterable[str]]],
) -> list[LockInfo]:
    """The snapshot of a store: ``holds`` key -> (run, since, token); ``waiters`` (run, keys)
    in arrival order."""
    queues: dict[str, list[int]] = {}
    for run_id, keys in waiters:
        for key in keys:
            queues.setdefault(key, []).append(run_id)
    out = []
    for key in sorted(set(holds) | set(queues)):
        held = holds.get(key)
        holder, since, token = held if held is not None else (None, None, None)
        out.append(LockInfo(key, holder, since, token, tuple(queues.get(key, ()))))
    return out


class Pump:
    """Local waiters of one store, and the task that grants them their keys."""

    def __init__(
        self,
        grant_round: Round,
        give_back: Callable[[int], Awaitable[None]],
        poll_seconds: float,
        name: str,
        retry_seconds: float = 0.5,
        max_retry_seconds: float = 5.0,
    ) -> None:
        self._round = grant_round
        self._give_back = give_back
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.name = name
        self.local: dict[int, tuple[tuple[str, ...], asyncio.Future[Grant]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._kick = asyncio.Event()
            self._task = loop.create_task(self._run(), name=self.name)

    def wake(self) -> None:
        """Run a grant round soon (thread-safe)."""
        loop, kick = self._loop, self._kick
        if loop is None or kick is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            kick.set()
        else:
            loop.call_soon_threadsafe(kick.set)

    async def wait_for_grant(self, run_id: int, keys: Sequence[str]) -> Grant:
        self.ensure_running()
        fut: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self.local[run_id] = (tuple(keys), fut)
        self.wake()
        try:
            return await fut
        finally:
            current = self.local.get(run_id)
            if current is not None and current[1] is fut:
                del self.local[run_id]

    def pending(self) -> dict[int, tuple[str, ...]]:
        return {rid: keys for rid, (keys, fut) in self.local.items() if not fut.done()}

    async def _run(self) -> None:
        assert self._kick is not None
        delay = 0.0
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for may swallow a cancellation that
                # arrives as the kick does, and aclose() would wait forever
                async with asyncio.timeout(delay or self.poll_seconds):
                    await self._kick.wait()
            except TimeoutError:
                pass
            self._kick.clear()
            pending = self.pending()
            if not pending:
                delay = 0.0
                continue
            try:
                granted = await self._round(pending)
                delay = 0.0
            except Exception as exc:
                delay = min(self.max_retry_seconds, delay * 2 or self.retry_seconds)
                log.warning("%s: grant round failed (%r); again in %.1f s", self.name, exc, delay)
                continue
            for run_id, grant in granted.items():
                entry = self.local.pop(run_id, None)
                if entry is None or entry[1].done():
                    # the waiter went away meanwhile: give the keys back
                    try:
                        await self._give_back(run_id)
                    except Exception:
                        log.warning("%s: giving back run %s failed", self.name, run_id)
                    continue
                entry[1].set_result(grant)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
