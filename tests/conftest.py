"""Fixtures: a real Prefect server for the session, and ``ascob serve`` processes on loopback.

Every test belongs to exactly one layer, chosen with ``-m``: ``unit`` (tests/unit: in-process, no
socket), ``integration`` (real servers on loopback: the default outside tests/unit) and ``system``
(whole installations: kill/restart, scale-out, the stack, soaks; modules say so with
``pytestmark = pytest.mark.system``)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Ascob, PrefectServer
from tests.postgres_server import PostgresServer, require_bindir

LAYERS = ("unit", "integration", "system")
UNIT_DIR = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give each test its layer: its own marker, else ``unit`` under tests/unit, else
    ``integration``; two layers on one test is an error."""
    for item in items:
        layers = {mark.name for mark in item.iter_markers() if mark.name in LAYERS}
        if len(layers) > 1:
            raise pytest.UsageError(f"{item.nodeid} is in several layers: {sorted(layers)}")
        if not layers:
            unit = UNIT_DIR in Path(str(item.path)).resolve().parents
            item.add_marker("unit" if unit else "integration")


_INET = (socket.AF_INET, socket.AF_INET6)
_connect, _bind = socket.socket.connect, socket.socket.bind


def _refuse_inet(original: Any, verb: str) -> Any:
    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in _INET:
            raise AssertionError(f"a unit test used the network: {verb} {address!r}")
        return original(self, address)

    return guarded


@pytest.fixture(autouse=True)
def no_network(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit layer has no socket: a test that connects to or listens on a network address
    fails here instead of becoming slow and flaky (stand-ins are served through ASGITransport).
    A test here that needs a loopback server says so with ``@pytest.mark.integration``."""
    if request.node.get_closest_marker("unit") is None:
        return
    monkeypatch.setattr(socket.socket, "connect", _refuse_inet(_connect, "connect to"))
    monkeypatch.setattr(socket.socket, "bind", _refuse_inet(_bind, "listen on"))


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
