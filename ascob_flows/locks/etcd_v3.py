"""The etcd lock store, v3 API, through etcd's JSON gateway (``/v3/...``) over httpx.

Layout under ``prefix`` (default ``ascob/locks/``; lock keys encoded by
:func:`~ascob_flows.locks.queueing.encode_key`)::

    <prefix>h/<key>     the hold of a key: {"run", "since", "keys"}; its mod_revision is the
                        fencing token
    <prefix>w/<run>     a waiting run: {"run", "keys", "since"}; its create_revision is its
                        place in the (global) queue
    <prefix>r/<run>     the run's marker: which lease carries its keys

Every key of a run is attached to the run's own lease (``lease_seconds``, renewed by
:meth:`keepalive`), so a dead executor's holds and waits vanish when the lease runs out, and
:meth:`release` is one lease revocation. A grant is one transaction: "the waiter is still there
and each key is still unheld" -> put every hold and delete the waiter. Waiters are woken by a watch
on the prefix (any deletion may free something); a slow poll backs the watch up.

Errors: :class:`EtcdError` (etcd answered with an error) and
:class:`~ascob_flows.locks.LockStoreUnavailable` (no answer); :meth:`acquire` never raises them,
it keeps trying until etcd answers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from ascob_flows.locks.base import (
    HOLDS_TRIES,
    RELEASE_TRIES,
    Grant,
    LockInfo,
    LockStore,
    LockStoreUnavailable,
)
from ascob_flows.locks.etcd_gateway import (
    EtcdError,
    EtcdGateway,
    absent,
    b64,
    created_at,
    delete,
    prefix_range,
    put,
    unb64,
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

__all__ = ["EtcdError", "EtcdV3LockStore"]  # EtcdError: from etcd_gateway


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _run_segment(run_id: int) -> str:
    return f"{run_id:020d}"


@dataclass
class _Hold:
    run_id: int
    token: int
    since: datetime | None
    lease: int


@dataclass
class _State:
    """The whole prefix as read at ``revision``."""

    revision: int
    holds: dict[str, _Hold] = field(default_factory=dict)
    waiters: dict[int, tuple[Waiter, int]] = field(default_factory=dict)  # run -> (waiter, lease)
    markers: dict[int, int] = field(default_factory=dict)  # run -> lease

    def held_by(self, run_id: int, keys: Sequence[str]) -> Grant | None:
        if keys and all(k in self.holds and self.holds[k].run_id == run_id for k in keys):
            return Grant(run_id, tuple(keys), {k: self.holds[k].token for k in keys})
        return None


class EtcdV3LockStore(LockStore):
    name = "etcd-v3"

    def __init__(
        self,
        url: str,
        lease_seconds: float = 30.0,
        *,
        prefix: str = "ascob/locks/",
        api_prefix: str = "/v3",
        transport: httpx.AsyncBaseTransport | None = None,
        poll_seconds: float = 5.0,
        request_timeout: float = 5.0,
    ) -> None:
        super().__init__(lease_seconds)
        self.etcd = EtcdGateway(
            url, api_prefix=api_prefix, transport=transport, request_timeout=request_timeout
        )
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._leases: dict[int, int] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_from = 0
        self._pump = Pump(self._grant_round, self.release, poll_seconds, "etcd-v3-lock-pump")

    @property
    def ttl(self) -> int:
        return max(1, math.ceil(self.lease_seconds))

    # ------------------------------------------------------------------ keys

    def _hold_key(self, key: str) -> str:
        return f"{self.prefix}h/{encode_key(key)}"

    def _waiter_key(self, run_id: int) -> str:
        return f"{self.prefix}w/{_run_segment(run_id)}"

    def _marker_key(self, run_id: int) -> str:
        return f"{self.prefix}r/{_run_segment(run_id)}"

    async def _read(self) -> _State:
        payload = await self.etcd.call("/kv/range", prefix_range(self.prefix))
        state = _State(revision=int(payload["header"]["revision"]))
        for kv in payload.get("kvs", []):
            name = unb64(kv["key"])[len(self.prefix) :]
            kind, _, rest = name.partition("/")
            lease = int(kv.get("lease", 0))
            try:
                value = json.loads(unb64(kv.get("value", "")) or "{}")
                if kind == "h":
                    since = value.get("since")
                    state.holds[decode_key(rest)] = _Hold(
                        int(value["run"]),
                        int(kv["mod_revision"]),
                        datetime.fromisoformat(since) if since else None,
                        lease,
                    )
                elif kind == "w":
                    run_id = int(rest)
                    waiter = Waiter(int(kv["create_revision"]), run_id, tuple(value["keys"]))
                    state.waiters[run_id] = (waiter, lease)
                elif kind == "r":
                    state.markers[int(rest)] = lease
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed lock entry %r", name)
        self._watch_from = max(self._watch_from, state.revision + 1)
        return state

    # ------------------------------------------------------------------ acquire

    async def acquire(self, run_id: int, keys: Sequence[str]) -> Grant:
        keys = tuple(dict.fromkeys(keys))
        grant = await retry(
            lambda: self._enqueue(run_id, keys),
            on=(LockStoreUnavailable, EtcdError),
            what=f"run {run_id}: queueing for locks",
        )
        if grant is not None:
            return grant
        self._ensure_watch()
        return await self._pump.wait_for_grant(run_id, keys)

    async def _adopt(self, run_id: int, lease: int) -> bool:
        """Follow the run's lease from now on. A lease this process did not know (another
        executor's, which took the run before it died or looked dead) is renewed at once: it may
        be about to run out, and nothing renewed it since (found by the soak: a run granted on
        such a lease was dispatched, and its keys freed 2 s later). False if it ran out."""
        if self._leases.get(run_id) != lease and not await self.etcd.renew(lease):
            return False
        self._leases[run_id] = lease
        return True

    async def _enqueue(self, run_id: int, keys: tuple[str, ...]) -> Grant | None:
        """The grant if the run holds every key already; else make sure it waits in the queue."""
        while True:
            state = await self._read()
            grant = state.held_by(run_id, keys)
            if grant is not None:
                if not await self._adopt(run_id, state.holds[keys[0]].lease):
                    continue  # its keys go with the lease: read again
                return grant
            queued = state.waiters.get(run_id)
            if queued is not None and set(queued[0].keys) == set(keys):
                if not await self._adopt(run_id, queued[1]):
                    continue
                return None  # keeps its place
            waiter_key = self._waiter_key(run_id)
            if queued is not None:  # it waits for other keys than asked now: queue again
                await self.etcd.txn([created_at(waiter_key, queued[0].order)], [delete(waiter_key)])
                continue
            lease = state.markers.get(run_id)
            if not lease or not await self._adopt(run_id, lease):
                lease = await self.etcd.grant_lease(self.ttl)
            value = json.dumps({"run": run_id, "keys": list(keys), "since": _now_iso()})
            payload = await self.etcd.txn(
                [absent(waiter_key)],
                [
                    put(waiter_key, value, lease),
                    put(self._marker_key(run_id), json.dumps({"run": run_id}), lease),
                ],
            )
            if payload.get("succeeded"):
                self._leases[run_id] = lease
                return None

    async def _grant_round(self, pending: dict[int, tuple[str, ...]]) -> dict[int, Grant]:
        state = await self._read()
        granted: dict[int, Grant] = {}
        for run_id, keys in pending.items():
            grant = state.held_by(run_id, keys)
            if grant is not None and await self._adopt(run_id, state.holds[keys[0]].lease):
                granted[run_id] = grant
            elif run_id not in state.waiters and self._pump.is_waiting(run_id):
                # its lease ran out (or someone released it): queue again, at the back
                log.warning("run %s: its place in the lock queue expired; queueing again", run_id)
                self._leases.pop(run_id, None)
                await self._enqueue(run_id, keys)
                self._pump.wake()
        holds = {k: Hold(h.run_id, h.token) for k, h in state.holds.items()}
        waiters = [w for w, _ in state.waiters.values()]
        for waiter in eligible(waiters, holds, set(pending) - set(granted)):
            grant = await self._take(state, waiter)
            if grant is not None:
                granted[waiter.run_id] = grant
            else:
                self._pump.wake()  # something changed under us: look again
        return granted

    async def try_acquire(self, run_id: int, keys: Sequence[str]) -> Grant | None:
        keys = tuple(dict.fromkeys(keys))
        for _ in range(3):
            state = await self._read()
            grant = state.held_by(run_id, keys)
            if grant is not None:
                if not await self._adopt(run_id, state.holds[keys[0]].lease):
                    continue
                return grant
            if any(k in state.holds and state.holds[k].run_id != run_id for k in keys):
                return None
            lease = state.markers.get(run_id)
            if not lease or not await self._adopt(run_id, lease):
                lease = await self.etcd.grant_lease(self.ttl)
            compare: list[dict[str, Any]] = []
            success = [put(self._marker_key(run_id), json.dumps({"run": run_id}), lease)]
            grant = await self._put_holds(state, run_id, keys, lease, compare, success)
            if grant is not None:
                return grant
        return None

    async def _take(self, state: _State, waiter: Waiter) -> Grant | None:
        run_id = waiter.run_id
        lease = state.waiters[run_id][1]
        waiter_key = self._waiter_key(run_id)
        compare = [created_at(waiter_key, waiter.order)]
        success: list[dict[str, Any]] = [delete(waiter_key)]
        return await self._put_holds(state, run_id, waiter.keys, lease, compare, success)

    async def _put_holds(
        self,
        state: _State,
        run_id: int,
        keys: tuple[str, ...],
        lease: int,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
    ) -> Grant | None:
        """One transaction: every key still as read (free, or ours) -> hold them all."""
        value = json.dumps({"run": run_id, "since": _now_iso(), "keys": list(keys)})
        for key in keys:
            hold_key = self._hold_key(key)
            held = state.holds.get(key)
            if held is not None:  # ours already (eligible): keep it, with its token
                compare.append(
                    {
                        "key": b64(hold_key),
                        "target": "MOD",
                        "result": "EQUAL",
                        "mod_revision": held.token,
                    }
                )
            else:
                compare.append(absent(hold_key))
                success.append(put(hold_key, value, lease))
        payload = await self.etcd.txn(compare, success)
        if not payload.get("succeeded"):
            return None
        revision = int(payload["header"]["revision"])
        tokens = {k: (state.holds[k].token if k in state.holds else revision) for k in keys}
        self._leases[run_id] = lease
        log.debug("run %s: took %s (revision %s)", run_id, list(keys), revision)
        return Grant(run_id, keys, tokens)

    # ------------------------------------------------------------------ watch

    def _ensure_watch(self) -> None:
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.get_running_loop().create_task(
                self._watch(), name="etcd-v3-lock-watch"
            )

    async def _watch(self) -> None:
        """Wake the pump on every deletion under the prefix; reconnect when the stream breaks."""
        failures = 0
        while True:
            request: dict[str, Any] = {**prefix_range(self.prefix), "filters": ["NOPUT"]}
            if self._watch_from:
                request["start_revision"] = self._watch_from
            try:
                async with self.etcd.watch(request) as response:
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        result = json.loads(line).get("result", {})
                        failures = 0
                        if result.get("compact_revision") or result.get("canceled"):
                            # history compacted: read again from now
                            self._watch_from = 0
                            self._pump.wake()
                            break
                        revision = int(result.get("header", {}).get("revision", 0))
                        if result.get("events"):
                            self._watch_from = max(self._watch_from, revision + 1)
                            self._pump.wake()
                        elif result.get("created"):
                            self._pump.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = LOCK_STORE.delay(failures)
                failures += 1
                log.debug("lock watch broke (%r); again in %.1f s", exc, delay)
                if isinstance(exc, httpx.TransportError):
                    self.etcd.next_endpoint()
                await asyncio.sleep(delay)
                self._pump.wake()

    # ------------------------------------------------------------------ the rest

    def forget(self, run_id: int) -> None:
        self._leases.pop(run_id, None)
        self._pump.forget(run_id)

    async def release(self, run_id: int) -> None:
        await retry(
            lambda: self._release(run_id),
            on=(LockStoreUnavailable,),
            attempts=RELEASE_TRIES,
            what=f"run {run_id}: releasing locks",
        )
        self._pump.wake()

    async def _release(self, run_id: int) -> None:
        leases = set()
        known = self._leases.get(run_id)
        if known:
            leases.add(known)
        state = await self._read()
        leases.update(lease for rid, lease in state.markers.items() if rid == run_id)
        if run_id in state.waiters:
            leases.add(state.waiters[run_id][1])
        held = [k for k, h in state.holds.items() if h.run_id == run_id]
        leases.update(state.holds[k].lease for k in held)
        for lease in leases - {0}:
            await self.etcd.revoke(lease)
        leftovers = [self._hold_key(k) for k in held if not state.holds[k].lease]
        if leftovers:
            await self.etcd.txn([], [delete(k) for k in leftovers])
        self._leases.pop(run_id, None)

    async def holds(self, run_id: int, keys: Sequence[str]) -> bool:
        """Whether the run holds every key; False while etcd does not answer (the caller waits)."""
        reads = [{"request_range": {"key": b64(self._hold_key(k))}} for k in keys]
        try:
            payload = await retry(
                lambda: self.etcd.txn([], reads),
                on=(LockStoreUnavailable,),
                attempts=HOLDS_TRIES,
                what=f"run {run_id}: checking its locks",
            )
        except LockStoreUnavailable:
            return False
        for response in payload.get("responses", []):
            kvs = response.get("response_range", {}).get("kvs", [])
            if not kvs or json.loads(unb64(kvs[0].get("value", "")) or "{}").get("run") != run_id:
                return False
        return True

    async def keepalive(self, run_ids: Iterable[int]) -> None:
        leases = {rid: self._leases[rid] for rid in run_ids if rid in self._leases}
        if not leases:
            return
        limit = asyncio.Semaphore(16)

        async def renew(run_id: int, lease: int) -> None:
            async with limit:
                alive = await self.etcd.renew(lease)
            if not alive:
                log.warning("run %s: its lock lease %s had run out", run_id, lease)
                if self._leases.get(run_id) == lease:
                    del self._leases[run_id]

        results = await asyncio.gather(
            *(renew(rid, lease) for rid, lease in leases.items()), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise LockStoreUnavailable(f"renewing {len(errors)} lock leases failed: {errors[0]!r}")

    async def snapshot(self) -> list[LockInfo]:
        state = await self._read()
        return lock_infos(
            {k: (h.run_id, h.since, h.token) for k, h in state.holds.items()},
            [w for w, _ in state.waiters.values()],
        )

    async def aclose(self) -> None:
        await self._pump.aclose()
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except (asyncio.CancelledError, Exception):
                pass
            self._watch_task = None
        await self.etcd.aclose()
