"""The SQL lock store: the embedded default, for one machine (SQLite) or one PostgreSQL.

Holds, waits and fencing counters are rows. One transaction, serialised by the database
(``BEGIN IMMEDIATE`` on SQLite, a table lock on PostgreSQL), grants in arrival order every
waiting run of this process that can have all its keys. Releases in this process wake waiters at
once; releases elsewhere are seen by a short poll (``poll_seconds``) while anything waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, delete, update
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col, select

from ascob_flows.locks.base import Grant, LockInfo, LockStore

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class LockHold(SQLModel, table=True):
    __tablename__ = "lock_holds"

    key: str = Field(primary_key=True)
    run_id: int = Field(index=True)
    token: int
    acquired_at: datetime
    expires_at: datetime


class LockWaiter(SQLModel, table=True):
    __tablename__ = "lock_waiters"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(index=True, unique=True)
    keys: list[str] = Field(sa_column=Column(JSON, nullable=False))
    enqueued_at: datetime
    expires_at: datetime


_GLOBAL = "*"  # the one fencing counter (a row of lock_counters)


class LockCounter(SQLModel, table=True):
    __tablename__ = "lock_counters"

    key: str = Field(primary_key=True)
    last_token: int = 0


class SqlLockStore(LockStore):
    name = "sql"

    def __init__(
        self, engine: Engine, lease_seconds: float = 30.0, poll_seconds: float = 0.5
    ) -> None:
        super().__init__(lease_seconds)
        self.engine = engine
        self.poll_seconds = poll_seconds
        self._local: dict[int, tuple[tuple[str, ...], asyncio.Future[Grant]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._pump_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ transactions

    def _tx(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _serialise(self, s: Session) -> None:
        if self.engine.dialect.name == "postgresql":
            s.connection().exec_driver_sql("LOCK TABLE lock_holds IN EXCLUSIVE MODE")
        # SQLite: the engine begins every transaction with BEGIN IMMEDIATE

    def _expire(self, s: Session, now: datetime) -> None:
        s.exec(delete(LockHold).where(col(LockHold.expires_at) < now))
        s.exec(delete(LockWaiter).where(col(LockWaiter.expires_at) < now))

    def _existing_grant(self, s: Session, run_id: int, keys: Sequence[str]) -> Grant | None:
        rows = s.exec(select(LockHold).where(LockHold.run_id == run_id)).all()
        held = {r.key: r.token for r in rows}
        if keys and all(k in held for k in keys):
            return Grant(run_id, tuple(keys), {k: held[k] for k in keys})
        return None

    def _enqueue_sync(self, run_id: int, keys: Sequence[str]) -> Grant | None:
        now = _now()
        lease = now + timedelta(seconds=self.lease_seconds)
        with self._tx() as s:
            self._serialise(s)
            self._expire(s, now)
            grant = self._existing_grant(s, run_id, keys)
            if grant is not None:
                s.exec(
                    update(LockHold).where(col(LockHold.run_id) == run_id).values(expires_at=lease)
                )
            else:
                waiter = s.exec(select(LockWaiter).where(LockWaiter.run_id == run_id)).first()
                if waiter is None:
                    s.add(
                        LockWaiter(
                            run_id=run_id, keys=list(keys), enqueued_at=now, expires_at=lease
                        )
                    )
                else:
                    waiter.expires_at = lease
                    s.add(waiter)
            s.commit()
            return grant

    def _grant_round_sync(
        self, local: dict[int, tuple[tuple[str, ...], asyncio.Future[Grant]]]
    ) -> dict[int, Grant]:
        now = _now()
        lease = now + timedelta(seconds=self.lease_seconds)
        granted: dict[int, Grant] = {}
        with self._tx() as s:
            self._serialise(s)
            self._expire(s, now)
            held = {h.key: h.run_id for h in s.exec(select(LockHold)).all()}
            queued = {w.run_id for w in s.exec(select(LockWaiter)).all()}
            for run_id, (wanted, fut) in local.items():
                if run_id in queued:
                    continue
                if fut.done():
                    # the acquire was cancelled after the round began, and the run may have
                    # released its place since (the release transaction is serialised with
                    # this one, and a caller cancels before it releases): do not queue it again
                    continue
                grant = self._existing_grant(s, run_id, wanted)
                if grant is not None:  # granted before, but the answer was lost
                    granted[run_id] = grant
                    continue
                # its place ran out (no keepalive for a lease): queue again, at the back
                log.warning("run %s: its place in the lock queue expired; queueing again", run_id)
                s.add(
                    LockWaiter(run_id=run_id, keys=list(wanted), enqueued_at=now, expires_at=lease)
                )
            s.flush()
            blocked: set[str] = set()
            waiters = s.exec(select(LockWaiter).order_by(col(LockWaiter.id))).all()
            for w in waiters:
                keys = set(w.keys)
                free = not (keys & blocked) and all(held.get(k, w.run_id) == w.run_id for k in keys)
                if free and w.run_id in local:
                    # one counter for all keys: a grant's tokens exceed every earlier token,
                    # so the fencing token (their max) also increases per key
                    counter = s.get(LockCounter, _GLOBAL) or self._first_counter(s)
                    counter.last_token += 1
                    s.add(counter)
                    tokens: dict[str, int] = {}
                    for key in sorted(keys):
                        tokens[key] = counter.last_token
                        s.merge(
                            LockHold(
                                key=key,
                                run_id=w.run_id,
                                token=counter.last_token,
                                acquired_at=now,
                                expires_at=lease,
                            )
                        )
                        held[key] = w.run_id
                    s.delete(w)
                    granted[w.run_id] = Grant(w.run_id, tuple(w.keys), tokens)
                blocked |= keys
            s.commit()
        return granted

    @staticmethod
    def _first_counter(s: Session) -> LockCounter:
        # start above the per-key counters of earlier versions: tokens never go back
        last = max((c.last_token for c in s.exec(select(LockCounter)).all()), default=0)
        return LockCounter(key=_GLOBAL, last_token=last)

    # ------------------------------------------------------------------ the pump

    def _ensure_pump(self) -> None:
        loop = asyncio.get_running_loop()
        if self._pump_task is None or self._pump_task.done() or self._loop is not loop:
            self._loop = loop
            self._kick = asyncio.Event()
            self._pump_task = loop.create_task(self._pump(), name="sql-lock-pump")

    def _wake(self) -> None:
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

    async def _pump(self) -> None:
        assert self._kick is not None
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for may swallow a cancellation
                # that arrives together with a kick, and aclose() would wait forever
                async with asyncio.timeout(self.poll_seconds):
                    await self._kick.wait()
            except TimeoutError:
                pass
            self._kick.clear()
            pending = {rid: entry for rid, entry in self._local.items() if not entry[1].done()}
            if not pending:
                continue
            try:
                granted = await asyncio.to_thread(self._grant_round_sync, pending)
            except Exception:
                log.warning("lock grant round failed; retrying", exc_info=True)
                await asyncio.sleep(self.poll_seconds)
                continue
            for run_id, grant in granted.items():
                entry = self._local.pop(run_id, None)
                if entry is None or entry[1].done():
                    # the waiter went away in between: give the keys back
                    await self.release(run_id)
                    continue
                entry[1].set_result(grant)

    # ------------------------------------------------------------------ interface

    async def acquire(self, run_id: int, keys: Sequence[str]) -> Grant:
        keys = tuple(dict.fromkeys(keys))
        grant = await asyncio.to_thread(self._enqueue_sync, run_id, keys)
        if grant is not None:
            return grant
        self._ensure_pump()
        fut: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._local[run_id] = (keys, fut)
        self._wake()
        try:
            return await fut
        finally:
            current = self._local.get(run_id)
            if current is not None and current[1] is fut:
                del self._local[run_id]

    def _release_sync(self, run_id: int) -> None:
        with self._tx() as s:
            self._serialise(s)
            s.exec(delete(LockHold).where(col(LockHold.run_id) == run_id))
            s.exec(delete(LockWaiter).where(col(LockWaiter.run_id) == run_id))
            s.commit()

    async def release(self, run_id: int) -> None:
        await asyncio.to_thread(self._release_sync, run_id)
        self._wake()

    def _holds_sync(self, run_id: int, keys: Sequence[str]) -> bool:
        now = _now()
        with self._tx() as s:
            rows = s.exec(
                select(LockHold)
                .where(LockHold.run_id == run_id)
                .where(col(LockHold.expires_at) >= now)
            ).all()
        return set(keys) <= {r.key for r in rows}

    async def holds(self, run_id: int, keys: Sequence[str]) -> bool:
        return await asyncio.to_thread(self._holds_sync, run_id, keys)

    def _keepalive_sync(self, run_ids: list[int]) -> None:
        lease = _now() + timedelta(seconds=self.lease_seconds)
        with self._tx() as s:
            for start in range(0, len(run_ids), 500):
                chunk = run_ids[start : start + 500]
                s.exec(
                    update(LockHold).where(col(LockHold.run_id).in_(chunk)).values(expires_at=lease)
                )
                s.exec(
                    update(LockWaiter)
                    .where(col(LockWaiter.run_id).in_(chunk))
                    .values(expires_at=lease)
                )
            s.commit()

    async def keepalive(self, run_ids: Iterable[int]) -> None:
        ids = list(run_ids)
        if ids:
            await asyncio.to_thread(self._keepalive_sync, ids)

    def _snapshot_sync(self) -> list[LockInfo]:
        now = _now()
        with self._tx() as s:
            holds = s.exec(select(LockHold).where(col(LockHold.expires_at) >= now)).all()
            waiters = s.exec(
                select(LockWaiter)
                .where(col(LockWaiter.expires_at) >= now)
                .order_by(col(LockWaiter.id))
            ).all()
        info: dict[str, dict[str, Any]] = {}
        for h in holds:
            info[h.key] = {"holder": h.run_id, "since": h.acquired_at, "token": h.token, "w": []}
        for w in waiters:
            for key in w.keys:
                entry = info.setdefault(
                    key, {"holder": None, "since": None, "token": None, "w": []}
                )
                entry["w"].append(w.run_id)
        return [
            LockInfo(key, e["holder"], e["since"], e["token"], tuple(e["w"]))
            for key, e in sorted(info.items())
        ]

    async def snapshot(self) -> list[LockInfo]:
        return await asyncio.to_thread(self._snapshot_sync)

    async def aclose(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            try:
                await self._pump_task
            except (asyncio.CancelledError, Exception):
                pass
            self._pump_task = None
