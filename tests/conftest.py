"""Fixtures: a real Prefect server for the session, and ``ascob serve`` processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Ascob, PrefectServer
from tests.postgres_server import PostgresServer, require_bindir


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ascob")


@pytest.fixture(scope="session")
def prefect_server(workdir: Path) -> Iterator[PrefectServer]:
    server = PrefectServer(workdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prefect_server_pg(workdir: Path) -> Iterator[PrefectServer]:
    """A Prefect server on PostgreSQL (Debian's ``postgresql``, started here): what Prefect
    recommends at scale. A SQLite-backed server creates about 1.5 flow runs/s on this machine;
    tests that push hundreds of runs through several processes use this one."""
    postgres = PostgresServer(require_bindir()).start()
    try:
        server = PrefectServer(workdir, database_url=postgres.create_database("prefect")).start()
        yield server
        server.stop()
    finally:
        postgres.stop()


@pytest.fixture(scope="session")
def ascob(workdir: Path, prefect_server: PrefectServer) -> Iterator[Ascob]:
    """One ``ascob serve`` shared by the API tests (each test makes its own runs)."""
    app = Ascob(workdir, prefect_server.api_url).start()
    yield app
    app.stop()


@pytest.fixture
def fresh_ascob(workdir: Path, prefect_server: PrefectServer) -> Iterator[Ascob]:
    """An ``ascob serve`` of this test alone (for tests that kill or restart it)."""
    app = Ascob(workdir, prefect_server.api_url)
    yield app
    app.stop()
