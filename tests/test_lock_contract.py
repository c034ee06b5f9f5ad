"""The lock-store contract: every store (SQL, etcd v3, etcd v2) passes the same suite.

Two store objects on one storage stand for two executors on two machines; a store that is no
longer kept alive stands for a dead executor.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import pytest

from ascob_flows.locks import Grant, LockStore

pytest_plugins = ["tests.conftest_locks"]

StoreFactory = Callable[..., LockStore]

WAIT = 10.0  # the longest any step may take before the test says "stuck"


async def granted(task: asyncio.Task[Grant], within: float = WAIT) -> Grant:
    return await asyncio.wait_for(asyncio.shield(task), within)


async def still_waiting(task: asyncio.Task[Grant], for_seconds: float = 0.4) -> None:
    await asyncio.sleep(for_seconds)
    assert not task.done(), f"granted while it should wait: {task.result()}"


async def queued(store: LockStore, run_id: int) -> None:
    """Wait until the run has its place in the queue (arrival order matters to the test)."""
    deadline = time.monotonic() + WAIT
    while not any(run_id in info.waiting for info in await store.snapshot()):
        assert time.monotonic() < deadline, f"run {run_id} never queued"
        await asyncio.sleep(0.02)


def start(store: LockStore, run_id: int, keys: Iterable[str]) -> asyncio.Task[Grant]:
    return asyncio.create_task(store.acquire(run_id, list(keys)))


async def keep_alive(store: LockStore, run_ids: set[int], every: float = 0.4) -> None:
    while True:
        await store.keepalive(set(run_ids))
        await asyncio.sleep(every)


def by_key(infos: Iterable[object]) -> dict[str, object]:
    return {info.key: info for info in infos}  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- all or nothing


async def test_all_or_nothing_and_a_waiter_holds_nothing(make_store: StoreFactory) -> None:
    a, b = make_store(), make_store()
    first = await a.acquire(1, ["A"])
    assert set(first.tokens) == {"A"}
    waiter = start(b, 2, ["A", "B"])
    await still_waiting(waiter)
    assert not await b.holds(2, ["B"])
    assert not await b.holds(2, ["A", "B"])
    assert all(info.holder != 2 for info in await b.snapshot())
    await a.release(1)
    grant = await granted(waiter)
    assert set(grant.tokens) == {"A", "B"}
    assert await a.holds(2, ["A", "B"])
    assert not await a.holds(1, ["A"])


async def test_no_deadlock_and_mutual_exclusion(make_store: StoreFactory) -> None:
    stores = [make_store(), make_store()]
    rng = random.Random(4)
    keys = ["K1", "K2", "K3", "K4"]
    holding: dict[str, int] = {}
    clashes: list[str] = []

    async def one(run_id: int) -> None:
        store = stores[run_id % 2]
        wanted = rng.sample(keys, rng.randint(1, 3))
        rng.shuffle(wanted)
        await store.acquire(run_id, wanted)
        for key in wanted:
            if key in holding:
                clashes.append(f"{key}: {holding[key]} and {run_id}")
            holding[key] = run_id
        await asyncio.sleep(rng.random() * 0.02)
        for key in wanted:
            holding.pop(key, None)
        await store.release(run_id)

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1, 41))), 60)
    assert clashes == []
    assert await stores[0].snapshot() == []


async def test_reacquire_is_idempotent(make_store: StoreFactory) -> None:
    store = make_store()
    first = await store.acquire(7, ["A", "B"])
    again = await asyncio.wait_for(store.acquire(7, ["B", "A"]), WAIT)
    assert again.tokens == first.tokens
    # an executor restarted on another machine takes the run's locks back as they are
    resumed = await asyncio.wait_for(make_store().acquire(7, ["A", "B"]), WAIT)
    assert resumed.tokens == first.tokens
    assert [i.holder for i in await store.snapshot()] == [7, 7]


# ---------------------------------------------------------------------- wake-up and fairness


async def test_release_wakes_a_waiter_on_another_store_at_once(make_store: StoreFactory) -> None:
    a, b = make_store(), make_store()
    await a.acquire(1, ["A"])
    waiter = start(b, 2, ["A"])
    await still_waiting(waiter, 1.0)  # long enough for any watch to be in place
    released = time.monotonic()
    await a.release(1)
    await granted(waiter)
    handoff = time.monotonic() - released
    assert handoff < 1.0, f"handoff took {handoff:.2f} s"


async def test_waiters_are_served_in_arrival_order(make_store: StoreFactory) -> None:
    a, b = make_store(), make_store()
    await a.acquire(1, ["A"])
    wide = start(b, 2, ["A", "B"])
    await queued(a, 2)
    narrow = []
    for run_id in (3, 4, 5):
        narrow.append(start(a if run_id % 2 else b, run_id, ["A"]))
        await queued(a, run_id)
    await a.release(1)  # 2 is no longer held back by a hold older than itself: A, B are its
    await granted(wide)
    only_b = start(a, 6, ["B"])
    await still_waiting(only_b, 0.3)
    for task in narrow:
        assert not task.done()
    await b.release(2)
    await granted(narrow[0])
    await granted(only_b)
    assert not narrow[1].done() and not narrow[2].done()
    await a.release(3)
    await granted(narrow[1])
    assert not narrow[2].done()
    await b.release(4)
    await granted(narrow[2])


async def test_a_later_run_takes_free_keys_while_the_earlier_waiter_is_blocked_by_an_old_hold(
    make_store: StoreFactory,
) -> None:
    """The original ASCOB's scenario: a run waiting for {x, a} while `a` is held must not stop a
    later run that needs only `x`."""
    a, b = make_store(), make_store()
    await a.acquire(1, ["a"])  # a long job
    wide = start(b, 2, ["x", "a"])
    await queued(a, 2)
    only_x = start(a, 3, ["x"])
    grant = await granted(only_x)
    assert set(grant.tokens) == {"x"}
    assert not wide.done()
    infos = by_key(await a.snapshot())
    assert infos["x"].reserved_for is None  # type: ignore[attr-defined]
    assert await b.waiting_for(2) == [1, 3]
    await a.release(3)
    await still_waiting(wide, 0.3)  # still held back by run 1
    await a.release(1)
    assert set((await granted(wide)).tokens) == {"x", "a"}
    await b.release(2)


async def test_once_the_old_hold_ends_the_waiters_keys_are_reserved(
    make_store: StoreFactory,
) -> None:
    a, b = make_store(), make_store()
    await a.acquire(1, ["b"])  # older than the wide waiter
    wide = start(b, 2, ["a", "b"])
    await queued(a, 2)
    first_a = await a.acquire(3, ["a"])  # bypasses: 2 is held back by run 1
    assert set(first_a.tokens) == {"a"}
    await a.release(1)  # no older hold left: a and b are now reserved for 2
    later_a = start(a, 4, ["a"])
    await still_waiting(later_a, 0.4)
    infos = by_key(await a.snapshot())
    assert infos["a"].reserved_for == 2 and infos["b"].reserved_for == 2  # type: ignore[attr-defined]
    assert await a.waiting_for(2) == [3]
    assert await a.waiting_for(4) == [2, 3]
    await a.release(3)
    await granted(wide)
    assert not later_a.done()
    await b.release(2)
    await granted(later_a)
    await a.release(4)


async def test_a_wide_run_is_not_starved_by_a_stream_of_narrow_ones(
    make_store: StoreFactory,
) -> None:
    """{A, B} waits while an old hold keeps B; an endless stream of {A} runs bypasses it meanwhile;
    once B's old holder ends, the wide run is granted within a bounded time."""
    store, other = make_store(), make_store()
    stop = asyncio.Event()
    next_id = iter(range(100, 10_000))
    narrow: dict[int, asyncio.Task[Grant]] = {}
    helpers: set[asyncio.Task[None]] = set()

    async def hold_then_release(task: asyncio.Task[Grant], run_id: int) -> None:
        await task
        await asyncio.sleep(0.05)
        await store.release(run_id)

    async def stream() -> None:
        # runs that need only A, overlapping each other, keep A busy all the time
        while not stop.is_set():
            run_id = next(next_id)
            narrow[run_id] = start(store, run_id, ["A"])
            helpers.add(asyncio.create_task(hold_then_release(narrow[run_id], run_id)))
            await asyncio.sleep(0.02)

    await other.acquire(2, ["B"])
    feeder = asyncio.create_task(stream())
    await asyncio.sleep(0.3)
    wide = start(other, 1, ["A", "B"])
    try:
        await queued(store, 1)
        granted_before = sum(1 for t in narrow.values() if t.done())
        # the stream goes on while B's old holder blocks the wide run (however slow the machine)
        deadline = time.monotonic() + WAIT
        while sum(1 for t in narrow.values() if t.done()) <= granted_before + 3:
            assert time.monotonic() < deadline, "the {A} runs stopped behind the wide waiter"
            await asyncio.sleep(0.05)
        assert not wide.done()
        await other.release(2)
        grant = await granted(wide, 15)
        assert set(grant.tokens) == {"A", "B"}
    finally:
        stop.set()
        await feeder
        for task in (*helpers, *narrow.values()):
            task.cancel()
        await asyncio.gather(*helpers, *narrow.values(), return_exceptions=True)
        for run_id in narrow:
            await store.release(run_id)
    await other.release(1)


async def test_try_acquire_takes_free_keys_and_never_queues(make_store: StoreFactory) -> None:
    a, b = make_store(), make_store()
    await a.acquire(1, ["A"])
    waiter = start(b, 2, ["B", "C"])  # B is free, so 2 holds B and C at once
    await granted(waiter)
    queued_c = start(a, 5, ["A", "C"])
    await queued(a, 5)
    assert await b.try_acquire(3, ["A", "D"]) is None  # A is held: nothing taken
    assert not await b.holds(3, ["D"])
    assert all(3 not in info.waiting for info in await a.snapshot())
    grant = await b.try_acquire(4, ["D", "E"])
    assert grant is not None and set(grant.tokens) == {"D", "E"}
    assert await a.holds(4, ["D", "E"])
    again = await b.try_acquire(4, ["D", "E"])  # idempotent, same tokens
    assert again is not None and again.tokens == grant.tokens
    await a.release(1)
    await b.release(2)
    await granted(queued_c)
    for run_id in (4, 5):
        await a.release(run_id)


# ---------------------------------------------------------------------- leases


async def test_a_dead_holders_locks_expire_within_the_lease(make_store: StoreFactory) -> None:
    dead, alive = make_store(lease_seconds=2), make_store(lease_seconds=2)
    await dead.acquire(1, ["A", "B"])
    taken = time.monotonic()
    waiter = start(alive, 2, ["A"])
    keeper = asyncio.create_task(keep_alive(alive, {2}))
    try:
        await granted(waiter, 2 + 4)
    finally:
        keeper.cancel()
    waited = time.monotonic() - taken
    assert waited < 2 + 3, f"the dead holder's lock lasted {waited:.1f} s"
    assert not await alive.holds(1, ["B"])


async def test_keepalive_keeps_the_locks_of_a_live_holder(make_store: StoreFactory) -> None:
    holder, other = make_store(lease_seconds=2), make_store(lease_seconds=2)
    await holder.acquire(1, ["A"])
    keeper = asyncio.create_task(keep_alive(holder, {1}))
    waiter = start(other, 2, ["A"])
    waiter_keeper = asyncio.create_task(keep_alive(other, {2}))
    try:
        await still_waiting(waiter, 5.0)  # more than twice the lease
        assert await holder.holds(1, ["A"])
        keeper.cancel()  # the holder dies
        await granted(waiter, 2 + 4)
    finally:
        keeper.cancel()
        waiter_keeper.cancel()


async def test_a_waiter_whose_place_expired_still_gets_the_lock(make_store: StoreFactory) -> None:
    holder, other = make_store(lease_seconds=2), make_store(lease_seconds=2)
    await holder.acquire(1, ["A"])
    keeper = asyncio.create_task(keep_alive(holder, {1}))
    waiter = start(other, 2, ["A"])  # nobody renews its place: it runs out
    try:
        await still_waiting(waiter, 4.0)
    finally:
        keeper.cancel()
    await holder.release(1)
    await granted(waiter)


async def test_a_run_taken_over_holds_its_keys_a_full_lease_from_the_takeover(
    make_store: StoreFactory,
) -> None:
    """Found by the soak: executor A held run 1's keys and died; B took the run over late in
    A's lease and got the keys back, but the lease was still A's, unrenewed: it ran out before
    B's first renewal, and another run took the key while run 1's job ran."""
    dead, heir = make_store(lease_seconds=3), make_store(lease_seconds=3)
    await dead.acquire(1, ["A"])
    await asyncio.sleep(2.0)  # most of the dead executor's lease is gone
    await asyncio.wait_for(heir.acquire(1, ["A"]), 5)
    await asyncio.sleep(1.8)  # past the dead one's lease; the heir has not renewed yet
    assert await heir.holds(1, ["A"])
    await heir.release(1)


async def test_a_place_taken_over_lasts_a_full_lease_from_the_takeover(
    make_store: StoreFactory,
) -> None:
    """The same for a run taken over while it waited: the keys it is granted later go with the
    place's lease, which must be the heir's from the takeover on."""
    dead, heir, holder = (make_store(lease_seconds=3) for _ in range(3))
    await holder.acquire(2, ["A"])
    keeper = asyncio.create_task(keep_alive(holder, {2}))
    first = start(dead, 1, ["A"])
    try:
        await still_waiting(first, 2.0)  # most of the dead executor's lease is gone
        first.cancel()
        waiter = start(heir, 1, ["A"])
        await still_waiting(waiter, 0.2)
        keeper.cancel()
        await holder.release(2)
        await granted(waiter)
        await asyncio.sleep(1.3)  # past the dead one's lease; the heir has not renewed yet
        assert await heir.holds(1, ["A"])
    finally:
        keeper.cancel()
        first.cancel()
    await heir.release(1)


# ---------------------------------------------------------------------- fencing, visibility


async def test_fencing_tokens_increase_per_key(make_store: StoreFactory) -> None:
    a, b = make_store(), make_store()
    seen: dict[str, list[int]] = {"A": [], "B": []}
    for run_id in range(1, 7):
        store = a if run_id % 2 else b
        keys = ["A", "B"] if run_id % 3 == 0 else ["A"]
        grant = await store.acquire(run_id, keys)
        assert set(grant.tokens) == set(keys)
        assert grant.fencing_token == max(grant.tokens.values())
        for key, token in grant.tokens.items():
            seen[key].append(token)
        await store.release(run_id)
    for key, tokens in seen.items():
        assert tokens == sorted(set(tokens)), f"{key}: {tokens}"
    assert len(seen["A"]) == 6 and len(seen["B"]) == 2


async def test_snapshot_and_waiting_for(make_store: StoreFactory) -> None:
    a, b = make_store(), make_store()
    before = datetime.now(UTC) - timedelta(seconds=5)
    grant = await a.acquire(1, ["A"])
    wide = start(b, 2, ["A", "B"])
    await queued(a, 2)
    infos = by_key(await b.snapshot())
    assert set(infos) == {"A", "B"}
    lock_a, lock_b = infos["A"], infos["B"]
    assert lock_a.holder == 1 and lock_a.token == grant.tokens["A"]  # type: ignore[attr-defined]
    assert before < lock_a.since < datetime.now(UTC) + timedelta(seconds=5)  # type: ignore[attr-defined]
    assert lock_a.waiting == (2,)  # type: ignore[attr-defined]
    assert lock_b.holder is None and lock_b.waiting == (2,)  # type: ignore[attr-defined]
    assert lock_b.reserved_for is None  # type: ignore[attr-defined]
    assert await a.waiting_for(2) == [1]
    assert await a.waiting_for(1) == []
    await a.release(1)
    await granted(wide)
    narrow = start(a, 3, ["B"])
    await queued(a, 3)
    assert await b.waiting_for(3) == [2]
    await b.release(2)
    await granted(narrow)
    await a.release(3)
    assert await a.snapshot() == []


async def test_cancelling_keeps_the_place_until_release(make_store: StoreFactory) -> None:
    a, b = make_store(), make_store()
    await a.acquire(1, ["A"])
    first = start(b, 2, ["A"])
    await queued(a, 2)
    first.cancel()
    later = start(a, 3, ["A"])
    await queued(a, 3)
    assert by_key(await a.snapshot())["A"].waiting == (2, 3)  # type: ignore[attr-defined]
    # asking again takes the same place
    again = start(b, 2, ["A"])
    await a.release(1)
    await granted(again)
    assert not later.done()
    await b.release(2)
    await granted(later)
    # a cancelled waiter that is released leaves the queue
    gone = start(b, 4, ["A"])
    await queued(a, 4)
    gone.cancel()
    await b.release(4)
    assert by_key(await a.snapshot())["A"].waiting == ()  # type: ignore[attr-defined]
    await a.release(3)
    assert await a.snapshot() == []


@pytest.mark.parametrize(
    "key",
    ["cluster/prod", "a b", "..", "_hidden", "naïve/键", "%2F?#&=", "x" * 256, "-", "k-A"],
)
async def test_any_valid_key_is_stored_as_given(make_store: StoreFactory, key: str) -> None:
    store = make_store()
    grant = await store.acquire(1, [key, "plain"])
    assert set(grant.tokens) == {key, "plain"}
    assert {i.key for i in await store.snapshot()} == {key, "plain"}
    waiter = start(make_store(), 2, [key])
    await still_waiting(waiter, 0.2)
    await store.release(1)
    await granted(waiter)
    assert await store.holds(2, [key])
    await store.release(2)
