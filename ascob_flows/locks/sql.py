"""The SQL lock store: the embedded default, for one machine (SQLite) or one PostgreSQL.

Holds, waits and fencing counters are rows. One transaction, serialised by the database
(``BEGIN IMMEDIATE`` on SQLite, a table lock on PostgreSQL), grants every waiting run of this
process that the fair rule of :mod:`ascob_flows.locks.queueing` lets through (the same pump and
rule as the etcd stores; a waiter's ``since`` is the fencing counter when it queued). Releases in
this process wake waiters at once; releases elsewhere are seen by a short poll
(``poll_seconds``) while anything waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import JSON, Column, delete, update
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col, select

from ascob_flows.locks.base import Grant, LockInfo, LockStore
from ascob_flows.locks.queueing import Hold, Pump, Waiter, eligible, lock_infos

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
    since: int = 0  # the fencing counter when it queued: holds with a token <= it are older


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
        self._pump = Pump(self._grant_round, self.release, poll_seconds, "sql-lock-pump")

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
                    self._queue(s, run_id, keys, now, lease)
                else:
                    waiter.expires_at = lease
                    s.add(waiter)
            s.commit()
            return grant

    def _queue(
        self, s: Session, run_id: int, keys: Sequence[str], now: datetime, lease: datetime
    ) -> None:
        counter = s.get(LockCounter, _GLOBAL)
        since = counter.last_token if counter is not None else 0
        s.add(
            LockWaiter(
                run_id=run_id, keys=list(keys), enqueued_at=now, expires_at=lease, since=since
            )
        )

    def _grant_round_sync(self, pending: dict[int, tuple[str, ...]]) -> dict[int, Grant]:
        now = _now()
        lease = now + timedelta(seconds=self.lease_seconds)
        granted: dict[int, Grant] = {}
        with self._tx() as s:
            self._serialise(s)
            self._expire(s, now)
            rows = s.exec(select(LockHold)).all()
            holds = {h.key: Hold(h.run_id, h.token) for h in rows}
            queued = {w.run_id for w in s.exec(select(LockWaiter)).all()}
            for run_id, wanted in pending.items():
                if run_id in queued or not self._pump.is_waiting(run_id):
                    continue
                grant = self._existing_grant(s, run_id, wanted)
                if grant is not None:  # granted before, but the answer was lost
                    granted[run_id] = grant
                    continue
                # its place ran out (no keepalive for a lease): queue again, at the back
                log.warning("run %s: its place in the lock queue expired; queueing again", run_id)
                self._queue(s, run_id, wanted, now, lease)
            s.flush()
            rows_w = s.exec(select(LockWaiter).order_by(col(LockWaiter.id))).all()
            waiters = {w.run_id: w for w in rows_w}
            queue = [Waiter(w.id or 0, w.run_id, tuple(w.keys), w.since + 1) for w in rows_w]
            for chosen in eligible(queue, holds, set(pending) - set(granted)):
                # one counter for all keys: a grant's tokens exceed every earlier token, so the
                # fencing token (their max) also increases per key
                counter = s.get(LockCounter, _GLOBAL) or self._first_counter(s)
                counter.last_token += 1
                s.add(counter)
                tokens: dict[str, int] = {}
                for key in sorted(chosen.keys):
                    tokens[key] = counter.last_token
                    s.merge(
                        LockHold(
                            key=key,
                            run_id=chosen.run_id,
                            token=counter.last_token,
                            acquired_at=now,
                            expires_at=lease,
                        )
                    )
                s.delete(waiters[chosen.run_id])
                granted[chosen.run_id] = Grant(chosen.run_id, chosen.keys, tokens)
            s.commit()
        return granted

    async def _grant_round(self, pending: dict[int, tuple[str, ...]]) -> dict[int, Grant]:
        return await asyncio.to_thread(self._grant_round_sync, pending)

    def _try_acquire_sync(self, run_id: int, keys: tuple[str, ...]) -> Grant | None:
        now = _now()
        lease = now + timedelta(seconds=self.lease_seconds)
        with self._tx() as s:
            self._serialise(s)
            self._expire(s, now)
            held = {h.key: h for h in s.exec(select(LockHold)).all()}
            if any(k in held and held[k].run_id != run_id for k in keys):
                return None
            counter = s.get(LockCounter, _GLOBAL) or self._first_counter(s)
            counter.last_token += 1
            s.add(counter)
            tokens: dict[str, int] = {}
            for key in keys:
                if key in held:  # ours already: keep its token, renew its lease
                    held[key].expires_at = lease
                    s.add(held[key])
                    tokens[key] = held[key].token
                    continue
                tokens[key] = counter.last_token
                s.add(
                    LockHold(
                        key=key,
                        run_id=run_id,
                        token=counter.last_token,
                        acquired_at=now,
                        expires_at=lease,
                    )
                )
            s.commit()
        return Grant(run_id, keys, tokens)

    async def try_acquire(self, run_id: int, keys: Sequence[str]) -> Grant | None:
        return await asyncio.to_thread(self._try_acquire_sync, run_id, tuple(dict.fromkeys(keys)))

    @staticmethod
    def _first_counter(s: Session) -> LockCounter:
        # start above the per-key counters of earlier versions: tokens never go back
        last = max((c.last_token for c in s.exec(select(LockCounter)).all()), default=0)
        return LockCounter(key=_GLOBAL, last_token=last)

    # ------------------------------------------------------------------ interface

    async def acquire(self, run_id: int, keys: Sequence[str]) -> Grant:
        keys = tuple(dict.fromkeys(keys))
        grant = await asyncio.to_thread(self._enqueue_sync, run_id, keys)
        if grant is not None:
            return grant
        return await self._pump.wait_for_grant(run_id, keys)

    def _release_sync(self, run_id: int) -> None:
        with self._tx() as s:
            self._serialise(s)
            s.exec(delete(LockHold).where(col(LockHold.run_id) == run_id))
            s.exec(delete(LockWaiter).where(col(LockWaiter.run_id) == run_id))
            s.commit()

    async def release(self, run_id: int) -> None:
        await asyncio.to_thread(self._release_sync, run_id)
        self._pump.wake()

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
            waiters = s.exec(select(LockWaiter).where(col(LockWaiter.expires_at) >= now)).all()
        return lock_infos(
            {h.key: (h.run_id, h.acquired_at, h.token) for h in holds},
            [Waiter(w.id or 0, w.run_id, tuple(w.keys), w.since + 1) for w in waiters],
        )

    async def snapshot(self) -> list[LockInfo]:
        return await asyncio.to_thread(self._snapshot_sync)

    async def aclose(self) -> None:
        await self._pump.aclose()
