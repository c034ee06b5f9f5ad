"""What every lock store shares: key-name encoding, the fair grant rule, the snapshot builder and
the grant pump.

The grant rule (:func:`plan_round`), the same for the SQL, etcd v3 and etcd v2 stores. Waiters are
looked at in arrival order. A waiter W is *held back by an old hold* when one of its keys is held by
another run whose hold was granted before W queued. Then:

- W may take its keys when each is free (or already its own) and none is reserved;
- unless W is held back by an old hold, W reserves its keys: no later waiter may take them.

So a run that needs only free keys goes ahead of an earlier waiter that cannot start anyway (the
original ASCOB's behaviour: a waiting run held and reserved nothing), but only while that waiter
is blocked by holds older than itself. Those are finite: once they end, the waiter's keys are
reserved for it, and the holds granted since end too. No waiter starves, and the earliest waiter
of any group of conflicting waiters is always eligible, so there is no deadlock.

Each store gives holds and waiters an order on one clock (an etcd revision or index, or the SQL
store's fencing counter), so "granted before W queued" is ``hold.order < waiter.since``.

The pump is one task per store and event loop: it runs a grant round for this process's waiters
whenever something may have been freed (a watch event, a local release) and, as a safety net,
every ``poll_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ascob_flows.locks.base import Grant, LockInfo
from ascob_flows.retry import LOCK_STORE

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
    """A run in the global queue: ``order`` is its arrival, ``since`` the store's clock when it
    queued (holds granted before it have a smaller order); both on the store's one clock."""

    order: int
    run_id: int
    keys: tuple[str, ...]
    since: int | None = None

    @property
    def queued_at(self) -> int:
        return self.order if self.since is None else self.since


_NOW = sys.maxsize  # the order of a hold granted in the round being planned


@dataclass(frozen=True)
class Hold:
    """A held key: its run, and ``order`` = when it was granted (its fencing token)."""

    run_id: int
    order: int


@dataclass
class RoundPlan:
    """What the fair rule says of the queue as it is now."""

    eligible: list[Waiter]
    reserved: dict[str, list[int]]  # key -> the waiters that reserve it, in arrival order
    blockers: dict[int, list[int]]  # waiter -> the runs it waits for


def plan_round(waiters: Iterable[Waiter], holds: Mapping[str, Hold]) -> RoundPlan:
    """Apply the fair rule to every waiter, in arrival order (see the module docstring)."""
    taken = dict(holds)
    reserved: dict[str, list[int]] = {}
    blockers: dict[int, list[int]] = {}
    out: list[Waiter] = []
    for w in sorted(waiters, key=lambda w: w.order):
        others = {k: taken[k] for k in w.keys if k in taken and taken[k].run_id != w.run_id}
        in_the_way = sorted({r[0] for k in w.keys if (r := reserved.get(k))} - {w.run_id})
        blockers[w.run_id] = sorted({h.run_id for h in others.values()} | set(in_the_way))
        if not others and not in_the_way:
            out.append(w)
            for k in w.keys:  # later waiters see them taken, granted after they queued
                taken[k] = Hold(w.run_id, _NOW)
        old = any(h.order < w.queued_at for h in others.values() if h.run_id != w.run_id)
        if not old:
            for k in w.keys:
                reserved.setdefault(k, []).append(w.run_id)
    return RoundPlan(out, reserved, blockers)


def eligible(
    waiters: Iterable[Waiter], holds: Mapping[str, Hold], wanted: Iterable[int]
) -> list[Waiter]:
    """The waiters among ``wanted`` runs that may take their keys now, in arrival order."""
    wanted = set(wanted)
    return [w for w in plan_round(waiters, holds).eligible if w.run_id in wanted]


Round = Callable[[dict[int, tuple[str, ...]]], Awaitable[dict[int, Grant]]]


def lock_infos(
    holds: Mapping[str, tuple[int, datetime | None, int | None]],
    waiters: Iterable[Waiter],
) -> list[LockInfo]:
    """The snapshot of a store: ``holds`` key -> (run, since, token); ``waiters`` as queued."""
    queue = sorted(waiters, key=lambda w: w.order)
    plan = plan_round(queue, {k: Hold(run, token or 0) for k, (run, _, token) in holds.items()})
    queues: dict[str, list[int]] = {}
    for w in queue:
        for key in w.keys:
            queues.setdefault(key, []).append(w.run_id)
    out = []
    for key in sorted(set(holds) | set(queues)):
        held = holds.get(key)
        holder, since, token = held if held is not None else (None, None, None)
        reservers = [r for r in plan.reserved.get(key, []) if r != holder]
        out.append(
            LockInfo(
                key,
                holder,
                since,
                token,
                tuple(queues.get(key, ())),
                reserved_for=reservers[0] if reservers else None,
                blockers={w: tuple(plan.blockers.get(w, ())) for w in queues.get(key, ())},
            )
        )
    return out


class Pump:
    """Local waiters of one store, and the task that grants them their keys."""

    def __init__(
        self,
        grant_round: Round,
        give_back: Callable[[int], Awaitable[None]],
        poll_seconds: float,
        name: str,
    ) -> None:
        self._round = grant_round
        self._give_back = give_back
        self.poll_seconds = poll_seconds
        self.name = name
        self.local: dict[int, tuple[tuple[str, ...], asyncio.Future[Grant]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._forgotten: set[int] = set()  # runs another process follows now: never give back

    def forget(self, run_id: int) -> None:
        self._forgotten.add(run_id)

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
        self._forgotten.discard(run_id)
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

    def is_waiting(self, run_id: int) -> bool:
        """Whether the run's acquire still waits (callable from a round in a worker thread). A
        round that finds a pending run's place gone queues it again only if it still waits: an
        acquire cancelled after the round began may have released its place since."""
        entry = self.local.get(run_id)
        return entry is not None and not entry[1].done()

    async def _run(self) -> None:
        assert self._kick is not None
        delay = 0.0
        failures = 0
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
                delay, failures = 0.0, 0
            except Exception as exc:
                delay = LOCK_STORE.delay(failures)
                failures += 1
                log.warning("%s: grant round failed (%r); again in %.1f s", self.name, exc, delay)
                continue
            for run_id, grant in granted.items():
                entry = self.local.pop(run_id, None)
                if entry is None or entry[1].done():
                    if run_id in self._forgotten:
                        continue  # taken over by another executor: the keys are its now
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
