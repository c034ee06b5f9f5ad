"""Fixtures for the lock tests: a real etcd for the session, and a fresh lock store per test.

Without an etcd binary the etcd tests skip on a workstation and fail in CI (``CI`` set): the
contract must be proven against a real etcd there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from ascob_flows.locks import LockStore
from tests.etcd_server import EtcdServer, etcd_binary

STORES = ["sql", "etcd-v3", "etcd-v2"]


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    binary = etcd_binary()
    if binary is None:
        message = "no etcd binary (apt-get install etcd-server, or set ASCOB_TEST_ETCD)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = EtcdServer(tmp_path_factory.mktemp("etcd"), binary).start()
    yield server
    server.stop()


StoreFactory = Callable[..., LockStore]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_store(
    store_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Makes stores that share one storage (as executors on several machines would)."""
    made: list[LockStore] = []
    namespace = uuid.uuid4().hex[:8]
    shared: dict[str, object] = {}
    if store_kind == "sql":
        from ascob_api.db import create_schema, make_engine

        engine = make_engine(f"sqlite:///{tmp_path / 'locks.db'}")
        create_schema(engine)
        shared["engine"] = engine
    else:
        shared["etcd"] = request.getfixturevalue("etcd_server")

    def factory(lease_seconds: float = 30.0) -> LockStore:
        store: LockStore
        if store_kind == "sql":
            from ascob_flows.locks.sql import SqlLockStore

            store = SqlLockStore(shared["engine"], lease_seconds=lease_seconds, poll_seconds=0.5)  # type: ignore[arg-type]
        elif store_kind == "etcd-v3":
            from ascob_flows.locks.etcd_v3 import EtcdV3LockStore

            server = shared["etcd"]
            assert isinstance(server, EtcdServer)
            store = EtcdV3LockStore(
                server.url, lease_seconds=lease_seconds, prefix=f"test/{namespace}/"
            )
        else:
            from ascob_flows.locks.etcd_v2 import EtcdV2LockStore

            server = shared["etcd"]
            assert isinstance(server, EtcdServer)
            store = EtcdV2LockStore(
                server.url, lease_seconds=lease_seconds, prefix=f"/test/{namespace}"
            )
        made.append(store)
        return store

    yield factory
    for store in made:
        await store.aclose()
    engine = shared.get("engine")
    if engine is not None:
        engine.dispose()  # type: ignore[attr-defined]
