"""Issue "Locks on etcd": lock handoff latency and acquisition throughput, per lock store.

    .venv/bin/python -m bench.locks [--handoffs 200] [--runs 1000] [--keys 10]

Starts its own etcd (``/usr/bin/etcd``, v2 API enabled) and a temporary SQLite file. For each store
(sql, etcd-v3, etcd-v2):

- **handoff**: a run holds key A; another run waits for A; the holder releases. Latency = from
  the start of ``release()`` until the waiter's ``acquire()`` returns. Measured with holder and
  waiter on the same store object ("same process") and on two store objects sharing the storage
  ("across processes": what two executors see);
- **throughput**: ``--runs`` runs with 1-3 random keys out of ``--keys``, all queued at once on
  two store objects, each releasing as soon as it holds its keys: acquisitions per second.

The original ASCOB re-checked waiting runs every 30 s: a release was noticed after 15 s on
average (uniform over the 30 s timer), 29.7 s at the 99th percentile. The ratio column compares.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ascob_flows.locks import LockStore
from tests.etcd_server import EtcdServer, etcd_binary

ORIGINAL_P50 = 15.0
ORIGINAL_P99 = 29.7


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def factories(workdir: Path, etcd: EtcdServer) -> dict[str, Callable[[str], LockStore]]:
    from ascob_api.db import create_schema, make_engine
    from ascob_flows.locks.etcd_v2 import EtcdV2LockStore
    from ascob_flows.locks.etcd_v3 import EtcdV3LockStore
    from ascob_flows.locks.sql import SqlLockStore

    engine = make_engine(f"sqlite:///{workdir / 'locks.db'}")
    create_schema(engine)
    return {
        "sql": lambda ns: SqlLockStore(engine),
        "etcd-v3": lambda ns: EtcdV3LockStore(etcd.url, prefix=f"bench/{ns}/"),
        "etcd-v2": lambda ns: EtcdV2LockStore(etcd.url, prefix=f"/bench/{ns}"),
    }


async def handoffs(holder: LockStore, waiter: LockStore, n: int, base: int) -> list[float]:
    samples = []
    for i in range(n):
        first, second = base + 2 * i, base + 2 * i + 1
        await holder.acquire(first, ["A"])
        task = asyncio.create_task(waiter.acquire(second, ["A"]))
        await asyncio.sleep(0.05)  # the waiter is queued (and watching)
        started = time.perf_counter()
        await holder.release(first)
        await task
        samples.append(time.perf_counter() - started)
        await waiter.release(second)
    return samples


async def throughput(stores: list[LockStore], runs: int, keys: int, base: int) -> float:
    rng = random.Random(1)
    names = [f"K{i}" for i in range(keys)]

    async def one(i: int) -> None:
        store = stores[i % len(stores)]
        await store.acquire(base + i, rng.sample(names, rng.randint(1, 3)))
        await store.release(base + i)

    async def keepalive() -> None:  # what the executors do every 5 s
        while True:
            await asyncio.sleep(5)
            for store in stores:
                await store.keepalive(range(base, base + runs))

    keeper = asyncio.create_task(keepalive())
    started = time.perf_counter()
    try:
        await asyncio.gather(*(one(i) for i in range(runs)))
    finally:
        keeper.cancel()
    return runs / (time.perf_counter() - started)


async def bench(store_names: list[str], n: int, runs: int, keys: int) -> None:
    binary = etcd_binary()
    if binary is None:
        raise SystemExit("no etcd binary: apt-get install etcd-server")
    with tempfile.TemporaryDirectory() as tmp:
        etcd = EtcdServer(Path(tmp), binary).start()
        try:
            make = factories(Path(tmp), etcd)
            print("| store | handoff | p50 ms | p99 ms | vs 30 s re-check (p50) | acquisitions/s |")
            print("|---|---|---|---|---|---|")
            for name in store_names:
                one = make[name]("same")
                two = [make[name]("pair"), make[name]("pair")]
                same = await handoffs(one, one, n, 1_000_000)
                across = await handoffs(two[0], two[1], n, 2_000_000)
                pair = [make[name]("tp"), make[name]("tp")]
                rate = await throughput(pair, runs, keys, 3_000_000)
                for label, samples in (("same process", same), ("across processes", across)):
                    p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
                    print(
                        f"| {name} | {label} | {p50 * 1000:.1f} | {p99 * 1000:.1f} "
                        f"| {ORIGINAL_P50 / p50:,.0f}x faster "
                        f"| {rate:.0f} |"
                    )
                print(
                    f"<!-- {name}: mean across {statistics.mean(across) * 1000:.1f} ms -->",
                    flush=True,
                )
                for store in (one, *two, *pair):
                    await store.aclose()
        finally:
            etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--handoffs", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--stores", nargs="*", default=["sql", "etcd-v3", "etcd-v2"])
    args = parser.parse_args()
    asyncio.run(bench(args.stores, args.handoffs, args.runs, args.keys))


if __name__ == "__main__":
    main()
