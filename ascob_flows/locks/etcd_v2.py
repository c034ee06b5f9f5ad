"""The etcd lock store, v2 API, through ``python-etcd`` (for clusters that still serve v2).

Layout under ``prefix`` (default ``/ascob/locks``; lock keys encoded by
:func:`~ascob_flows.locks.queueing.encode_key`)::

    <prefix>/h/<key>      the hold of a key: {"run", "since", "keys"}; TTL = the lease; its
                          createdIndex is the fencing token
    <prefix>/w/<index>    a waiting run (an in-order key, POSTed): {"run", "keys", "since"};
                          TTL = the lease; its createdIndex is its place in the queue

v2 has no multi-key transaction, so a grant creates the holds one by one, each with
``prevExist=false`` (so a key is never held twice), in sorted order, and takes back the ones it
made if any key turns out to be taken; only the waiter that the fair rule puts first tries, so that
is rare. :meth:`keepalive` refreshes the TTL of the run's nodes (``refresh=true``, compare-and-swap
on ``prevIndex``). A watch thread (``waitIndex``; an ``EventIndexCleared`` answer means: read
again) wakes waiters on every deletion or expiry.

python-etcd's own ``etcd.Lock`` is not used: its ``acquire(timeout=...)`` never returns and it
busy-loops once the watch history is cleared. python-etcd is synchronous: every call runs in a
thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import etcd

from ascob_flows.locks.base import (
    HOLDS_TRIES,
    RELEASE_TRIES,
    Grant,
    LockInfo,
    LockStore,
    LockStoreUnavailable,
)
from ascob_flows.locks.queueing import (
    Hold,
    Pump,
    Waiter,
    decode_key,
    eligible,
    encode_key,
    lock_infos,
)
from ascob_flows.retry import LOCK_STORE, retry

log = logging.getLogger(__name__)

__all__ = ["EtcdV2LockStore"]

T = TypeVar("T")

# answers that say "etcd is not there (now)"; everything else is a real answer
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    etcd.EtcdConnectionFailed,
    etcd.EtcdLeaderElectionInProgress,
    etcd.EtcdWatchTimedOut,
    OSError,
)


@dataclass
class _Node:
    key: str
    created: int
    modified: int
    run_id: int
    keys: tuple[str, ...]
    since: datetime | None


@dataclass
class _State:
    index: int
    holds: dict[str, _Node] = field(default_factory=dict)
    waiters: list[_Node] = field(default_factory=list)

    def held_by(self, run_id: int, keys: Sequence[str]) -> Grant | None:
        if keys and all(k in self.holds and self.holds[k].run_id == run_id for k in keys):
            return Grant(run_id, tuple(keys), {k: self.holds[k].created for k in keys})
        return None

    def waiter_of(self, run_id: int) -> _Node | None:
        return next((w for w in self.waiters if w.run_id == run_id), None)


class EtcdV2LockStore(LockStore):
    name = "etcd-v2"

    def __init__(
        self,
        url: str,
        lease_seconds: float = 30.0,
        *,
        prefix: str = "/ascob/locks",
        poll_seconds: float = 5.0,
        request_timeout: float = 5.0,
        watch_timeout: float = 2.0,
    ) -> None:
        super().__init__(lease_seconds)
        first = url.split(",")[0].strip()
        parts = urlsplit(first if "://" in first else f"http://{first}")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 2379
        self._protocol = parts.scheme or "http"
        self.prefix = "/" + prefix.strip("/")
        self.request_timeout = request_timeout
        self.watch_timeout = watch_timeout
        self._client = self._new_client(request_timeout)
        self._dirs_ready = False
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._pump = Pump(self._grant_round, self.release, poll_seconds, "etcd-v2-lock-pump")

    @property
    def ttl(self) -> int:
        return max(1, math.ceil(self.lease_seconds))

    def _new_client(self, read_timeout: float) -> etcd.Client:
        return etcd.Client(
            host=self._host,
            port=self._port,
            protocol=self._protocol,
            read_timeout=read_timeout,
            allow_reconnect=False,
        )

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except _UNAVAILABLE as exc:
            raise LockStoreUnavailable(f"etcd v2 at {self._host}:{self._port}: {exc!r}") from exc

    # ------------------------------------------------------------------ reading

    def _ensure_dirs(self) -> None:
        if self._dirs_ready:
            return
        for sub in ("h", "w"):
            try:
                self._client.write(f"{self.prefix}/{sub}", None, dir=True, prevExist=False)
            except (etcd.EtcdAlreadyExist, etcd.EtcdNotFile):
                pass
        self._dirs_ready = True

    def _read_sync(self) -> _State:
        self._ensure_dirs()
        result = self._client.read(self.prefix, recursive=True, sorted=True)
        state = _State(index=int(result.etcd_index or 0))
        for node in result.leaves:
            if node.dir or node.key is None:
                continue
            rel = node.key[len(self.prefix) + 1 :]
            kind, _, rest = rel.partition("/")
            try:
                value = json.loads(node.value or "{}")
                since = value.get("since")
                entry = _Node(
                    node.key,
                    int(node.createdIndex),
                    int(node.modifiedIndex),
                    int(value["run"]),
                    tuple(value.get("keys", ())),
                    datetime.fromisoformat(since) if since else None,
                )
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed lock entry %r", node.key)
                continue
            if kind == "h":
                state.holds[decode_key(rest)] = entry
            elif kind == "w":
                state.waiters.append(entry)
        state.waiters.sort(key=lambda w: w.created)
        return state

    async def _read(self) -> _State:
        return await self._run(self._read_sync)

    # ------------------------------------------------------------------ acquire

    async def acquire(self, run_id: int, keys: Sequence[str]) -> Grant:
        keys = tuple(dict.fromkeys(keys))
        grant = await retry(
            lambda: self._run(self._enqueue_sync, run_id, keys),
            on=(LockStoreUnavailable, etcd.EtcdException),
            what=f"run {run_id}: queueing for locks",
        )
        if grant is not None:
            return grant
        self._ensure_watch()
        return await self._pump.wait_for_grant(run_id, keys)

    def _renew_sync(self, nodes: list[_Node]) -> bool:
        """Give these nodes a full TTL now: the run was taken over, and whoever renewed them
        before may be dead (found by the soak: keys taken back late in their TTL ran out before
        the first renewal). False if one of them ran out already."""
        try:
            for node in nodes:
                self._client.refresh(node.key, ttl=self.ttl, prevIndex=node.modified)
        except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
            return False
        return True

    def _enqueue_sync(self, run_id: int, keys: tuple[str, ...]) -> Grant | None:
        state = self._read_sync()
        grant = state.held_by(run_id, keys)
        if grant is not None:
            if self._renew_sync([state.holds[k] for k in keys]):
                return grant
            return self._enqueue_sync(run_id, keys)  # a hold ran out meanwhile: look again
        queued = state.waiter_of(run_id)
        if queued is not None:
            if set(queued.keys) == set(keys) and self._renew_sync([queued]):
                return None  # keeps its place
            self._delete_sync(queued)
        value = json.dumps({"run": run_id, "keys": list(keys), "since": _now_iso()})
        self._client.write(f"{self.prefix}/w", value, ttl=self.ttl, append=True)
        return None

    def _delete_sync(self, node: _Node) -> None:
        try:
            self._client.delete(node.key, prevIndex=node.modified)
        except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
            pass

    async def _grant_round(self, pending: dict[int, tuple[str, ...]]) -> dict[int, Grant]:
        return await self._run(self._grant_round_sync, pending)

    def _grant_round_sync(self, pending: dict[int, tuple[str, ...]]) -> dict[int, Grant]:
        state = self._read_sync()
        granted: dict[int, Grant] = {}
        for run_id, keys in pending.items():
            grant = state.held_by(run_id, keys)
            if grant is not None:
                granted[run_id] = grant
            elif state.waiter_of(run_id) is None and self._pump.is_waiting(run_id):
                log.warning("run %s: its place in the lock queue expired; queueing again", run_id)
                self._enqueue_sync(run_id, keys)
                self._pump.wake()
        holds = {k: Hold(h.run_id, h.created) for k, h in state.holds.items()}
        waiters = [Waiter(w.created, w.run_id, w.keys) for w in state.waiters]
        for waiter in eligible(waiters, holds, set(pending) - set(granted)):
            node = state.waiter_of(waiter.run_id)
            assert node is not None
            grant = self._take_sync(state, node)
            if grant is not None:
                granted[waiter.run_id] = grant
            else:
                self._pump.wake()
        return granted

    def _take_sync(self, state: _State, waiter: _Node) -> Grant | None:
        grant = self._put_holds_sync(state, waiter.run_id, waiter.keys)
        if grant is not None:
            self._delete_sync(waiter)
        return grant

    def _try_acquire_sync(self, run_id: int, keys: tuple[str, ...]) -> Grant | None:
        state = self._read_sync()
        if any(k in state.holds and state.holds[k].run_id != run_id for k in keys):
            return None
        return self._put_holds_sync(state, run_id, keys)

    async def try_acquire(self, run_id: int, keys: Sequence[str]) -> Grant | None:
        return await self._run(self._try_acquire_sync, run_id, tuple(dict.fromkeys(keys)))

    def _put_holds_sync(self, state: _State, run_id: int, keys: tuple[str, ...]) -> Grant | None:
        """Hold every key (each free or already the run's, as read); all or nothing."""
        value = json.dumps({"run": run_id, "since": _now_iso(), "keys": list(keys)})
        tokens: dict[str, int] = {}
        made: list[_Node] = []
        for key in sorted(keys):
            held = state.holds.get(key)
            if held is not None and held.run_id == run_id and self._renew_sync([held]):
                tokens[key] = held.created
                continue
            try:
                result = self._client.write(
                    f"{self.prefix}/h/{encode_key(key)}", value, ttl=self.ttl, prevExist=False
                )
            except etcd.EtcdAlreadyExist:
                for node in made:  # all or nothing: give back what we took
                    self._delete_sync(node)
                return None
            node = _Node(
                str(result.key),
                int(result.createdIndex),
                int(result.modifiedIndex),
                run_id,
                keys,
                None,
            )
            made.append(node)
            tokens[key] = node.created
        return Grant(run_id, keys, {k: tokens[k] for k in keys})

    # ------------------------------------------------------------------ watch

    def _ensure_watch(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._closed.clear()
            self._watcher = threading.Thread(
                target=self._watch_main, name="etcd-v2-lock-watch", daemon=True
            )
            self._watcher.start()

    def _watch_main(self) -> None:
        """Wake the pump on every deletion or expiry under the prefix."""
        client = self._new_client(self.watch_timeout)
        index: int | None = None
        failures = 0
        while not self._closed.is_set():
            try:
                if index is None:
                    index = int(client.read(self.prefix).etcd_index or 0) + 1
                    self._pump.wake()
                event = client.watch(
                    self.prefix, index=index, recursive=True, timeout=self.watch_timeout
                )
                failures = 0
                index = int(event.modifiedIndex) + 1
                if event.action in ("delete", "expire", "compareAndDelete"):
                    self._pump.wake()
            except etcd.EtcdWatchTimedOut:
                continue
            except etcd.EtcdEventIndexCleared:
                index = None  # history moved on: read again, wake the pump
            except Exception as exc:
                delay = LOCK_STORE.delay(failures)
                failures += 1
                log.debug("lock watch broke (%r); again in %.1f s", exc, delay)
                index = None
                time.sleep(delay)

    # ------------------------------------------------------------------ the rest

    def _release_sync(self, run_id: int) -> None:
        state = self._read_sync()
        for node in [*state.holds.values(), *state.waiters]:
            if node.run_id == run_id:
                self._delete_sync(node)

    def forget(self, run_id: int) -> None:
        self._pump.forget(run_id)

    async def release(self, run_id: int) -> None:
        await retry(
            lambda: self._run(self._release_sync, run_id),
            on=(LockStoreUnavailable,),
            attempts=RELEASE_TRIES,
            what=f"run {run_id}: releasing locks",
        )
        self._pump.wake()

    def _holds_sync(self, run_id: int, keys: Sequence[str]) -> bool:
        state = self._read_sync()
        return all(k in state.holds and state.holds[k].run_id == run_id for k in keys)

    async def holds(self, run_id: int, keys: Sequence[str]) -> bool:
        """Whether the run holds every key; False while etcd does not answer (the caller waits)."""
        try:
            return await retry(
                lambda: self._run(self._holds_sync, run_id, keys),
                on=(LockStoreUnavailable,),
                attempts=HOLDS_TRIES,
                what=f"run {run_id}: checking its locks",
            )
        except LockStoreUnavailable:
            return False

    def _keepalive_sync(self, run_ids: set[int]) -> None:
        state = self._read_sync()
        for node in [*state.holds.values(), *state.waiters]:
            if node.run_id in run_ids:
                try:
                    self._client.refresh(node.key, ttl=self.ttl, prevIndex=node.modified)
                except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
                    log.warning("run %s: its lock node %s had run out", node.run_id, node.key)

    async def keepalive(self, run_ids: Iterable[int]) -> None:
        ids = set(run_ids)
        if ids:
            await self._run(self._keepalive_sync, ids)

    async def snapshot(self) -> list[LockInfo]:
        state = await self._read()
        return lock_infos(
            {k: (h.run_id, h.since, h.created) for k, h in state.holds.items()},
            [Waiter(w.created, w.run_id, w.keys) for w in state.waiters],
        )

    async def aclose(self) -> None:
        self._closed.set()
        await self._pump.aclose()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()
