"""Operating ASCOB (issue 15), the parts that need no Prefect server: the database file's mode,
a busy API port, the CI script's package install, what prefect.yaml and the README say, the
artifact's links, and the installation identity that keeps installations apart."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
import yaml

from tests.harness import ROOT, free_port

DUMMY = {"_execution_backend_id": "dummyBackend"}


def test_sqlite_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    from ascob_api.db import create_schema, make_engine

    old = os.umask(0o022)
    try:
        engine = make_engine(f"sqlite:///{tmp_path / 'ascob.db'}")
        create_schema(engine)
        with engine.begin() as conn:  # a write: SQLite makes its -wal file now
            conn.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
        engine.dispose()
    finally:
        os.umask(old)
    for path in [tmp_path / "ascob.db", *tmp_path.glob("ascob.db-*")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_api_on_a_busy_port_fails_clearly_without_claiming_to_listen(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "ASCOB_HOME": str(tmp_path),
            "ASCOB_ROOT_TOKEN": "rootToken",
            "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",  # nothing answers
            "PREFECT_HOME": str(tmp_path / "prefect"),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "ascob_api.cli", "api", "--port", str(port)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert f"cannot listen on 127.0.0.1:{port}" in out and "--port" in out, out
    assert "ASCOB API on" not in out, out


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def test_ci_installs_packages_without_starting_or_killing_services(tmp_path: Path) -> None:
    """The install runs with a policy-rc.d that forbids starting services (and removes it
    afterwards); nothing is stopped by name, so no other etcd on the machine is touched."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "calls"
    policy = tmp_path / "policy-rc.d"
    _stub(bin_, "sudo", 'exec "$@"')
    # what invoke-rc.d does in a package's postinst: ask the policy before starting a service
    _stub(
        bin_,
        "apt-get",
        f'echo "apt-get $*" >> {calls}\n'
        f'if [ "$1" = install ]; then "{policy}" etcd start; echo "policy $?" >> {calls}; fi',
    )
    for name in ("pkill", "killall", "kill", "systemctl", "service"):
        _stub(bin_, name, f'echo "{name} $*" >> {calls}')
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "POLICY_RC_D": str(policy)}
    proc = subprocess.run(
        ["bash", str(ROOT / ".ci" / "install-packages"), "etcd-server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = calls.read_text().splitlines()
    assert "apt-get install -y -qq --no-install-recommends etcd-server" in log, log
    assert "policy 101" in log, log  # the service was not allowed to start
    assert not [c for c in log if c.split()[0] in ("pkill", "killall", "kill", "systemctl")], log
    assert not policy.exists()  # ours, removed again
    script = (ROOT / ".ci" / "test").read_text()
    assert not re.search(r"\b(pkill|killall)\b", script), "CI must not stop processes by name"


async def test_prefect_yaml_describes_the_deployment_the_executor_registers() -> None:
    from ascob_flows.executor import ensure_deployment

    class Client:
        deployment: dict[str, Any] = {}

        async def create_flow(self, _flow: Any) -> Any:
            return uuid4()

        async def create_deployment(self, **kwargs: Any) -> Any:
            self.deployment = kwargs
            return uuid4()

    client = Client()
    await ensure_deployment(client)  # type: ignore[arg-type]
    documented = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"][0]
    registered = client.deployment
    assert documented["name"] == registered["name"]
    assert documented["entrypoint"] == registered["entrypoint"]
    assert documented["tags"] == registered["tags"]
    assert documented["enforce_parameter_schema"] == registered["enforce_parameter_schema"]


def test_readme_names_the_quick_start_flow_run_as_ascob_names_it() -> None:
    from ascob_flows.ui import flow_run_name

    readme = (ROOT / "README.md").read_text()
    spec = re.search(r'"description": "([^"]+)"', readme)
    named = re.search(r"to see the run as flow run `([^`]+)`", readme)
    assert spec and named, "the README's quick start changed: update this test"
    assert named.group(1) == flow_run_name(1, spec.group(1))


def test_readme_run_deployment_example_names_the_prefect_server() -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme[readme.index("from prefect.deployments import run_deployment") - 300 :]
    example = example[: example.index("timeout=0") + 20]
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in example, example


def test_artifact_says_what_the_ascob_links_need() -> None:
    from ascob_flows.ports import RunRecord
    from ascob_flows.status import RunStatus
    from ascob_flows.ui import link_markdown

    rec = RunRecord(
        id=7,
        status=RunStatus.RUNNING,
        description="d",
        submitter="alice",
        backend_id="dummyBackend",
        labels={},
        parameters={},
        lock_keys=(),
        webhook_id="w",
        identification_keys={"job": "1"},
        flow_run_id=None,
        executor_id=None,
        dispatch_started=True,
        abort_force=False,
        stop_sent=False,
        defined_time=None,
    )
    text = link_markdown(rec, "http://jenkins/job/1", "http://ascob:8081")
    # a markdown link a browser opens must answer without a token header: only the docs page
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert "http://ascob:8081/docs" in links, text
    assert not [u for u in links if "/api/" in u], text
    assert "http://ascob:8081/api/runs/7" in text and "X-Api-Token" in text, text


# --------------------------------------------------------------------------- installations


def test_installation_identity_is_created_once_per_repository(tmp_path: Path) -> None:
    from ascob_api.db import create_schema, make_engine
    from ascob_api.repository import Repository

    def repo(name: str) -> Repository:
        engine = make_engine(f"sqlite:///{tmp_path / name}")
        create_schema(engine)
        return Repository(engine)

    first = repo("a.db").installation_id()
    assert first and repo("a.db").installation_id() == first  # kept, not made again
    assert repo("b.db").installation_id() != first


def _flow_run(tags: list[str], run_id: int | None) -> Any:
    params = {} if run_id is None else {"run_id": run_id}
    return SimpleNamespace(id=uuid4(), tags=tags, parameters=params)


@pytest.mark.parametrize(
    ("tags", "run_id", "claimable"),
    [
        (["ascob-installation:mine", "backend:dummyBackend"], 1, True),
        (["ascob-installation:theirs", "backend:dummyBackend"], 1, False),
        (["ascob-installation:theirs"], None, False),
        ([], None, True),  # a job_spec flow run started from Prefect: it registers itself
        (["backend:dummyBackend"], 1, False),  # untagged run of an older version: ask the repo
    ],
)
def test_claimable_flow_runs(tags: list[str], run_id: int | None, claimable: bool) -> None:
    from ascob_flows.executor.queries import Queries

    queries = Queries(uuid4(), SimpleNamespace(repo=None), "mine")  # type: ignore[arg-type]
    assert queries.claimable(_flow_run(tags, run_id)) is claimable


async def test_another_installations_flow_run_is_never_taken_for_a_run_of_this_one() -> None:
    from ascob_flows.executor.queries import Queries

    mapped = _flow_run(["backend:dummyBackend"], 3)  # untagged, but this repository's

    class Repo:
        def run_for_flow_run(self, flow_run_id: str) -> int | None:
            return 3 if flow_run_id == str(mapped.id) else None

    from ascob_flows.ports import AsyncRunRepository

    runtime = SimpleNamespace(db=AsyncRunRepository(Repo()))  # type: ignore[arg-type]
    queries = Queries(uuid4(), runtime, "mine")  # type: ignore[arg-type]
    assert await queries.owns(_flow_run(["ascob-installation:mine"], 1)) == 1
    assert await queries.owns(_flow_run(["ascob-installation:theirs"], 1)) is None
    assert await queries.owns(_flow_run([], 1)) is None  # run 1 here is another flow run's
    assert await queries.owns(mapped) == 3
    # a job_spec flow run, tagged when it registered: the repository knows its run
    registered = _flow_run(["ascob-installation:mine", "owner:alice"], None)
    registered.id = mapped.id
    assert await queries.owns(registered) == 3


# --------------------------------------------------------------------------- clean stop


async def test_a_cancelled_flow_run_is_handed_back_only_during_a_clean_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import logging

    from prefect.flow_engine import AsyncFlowRunEngine

    from ascob_flows.engine_compat import handing_back, tune_flow_engine

    tune_flow_engine()
    written: list[tuple[str, str | None, bool]] = []

    class Client:
        async def set_flow_run_state(self, _id: Any, state: Any, force: bool) -> None:
            written.append((state.type.value, state.name, force))

    engine = SimpleNamespace(flow_run=SimpleNamespace(id=uuid4()), client=Client(), _raised=None)
    engine_log = logging.getLogger("prefect.flow_runs")
    with handing_back("executor-1"), caplog.at_level(logging.INFO):
        await AsyncFlowRunEngine.handle_crash(engine, asyncio.CancelledError())  # type: ignore[arg-type]
        engine_log.error("Finished in state Running()")
    assert written == [("SCHEDULED", "Resuming", True)]
    assert "Finished in state" not in caplog.text and "Crash detected" not in caplog.text
    # outside a clean stop the engine's messages pass (a cancellation is Prefect's crash)
    record = logging.LogRecord(
        "prefect.flow_runs", logging.ERROR, __file__, 1, "Finished in state Running()", None, None
    )
    assert all(f.filter(record) for f in engine_log.filters)


@pytest.mark.parametrize(
    ("host", "public_url", "api_url", "ui_url"),
    [
        ("127.0.0.1", None, "http://127.0.0.1:4200/api", "http://127.0.0.1:4200"),
        # the image: ASCOB talks over loopback, browsers get an address they can open
        ("0.0.0.0", None, "http://127.0.0.1:4200/api", "http://localhost:4200"),
        ("0.0.0.0", "https://prefect.example.com/", "http://127.0.0.1:4200/api",
         "https://prefect.example.com"),
        ("::", None, "http://[::1]:4200/api", "http://localhost:4200"),
        ("10.1.2.3", None, "http://10.1.2.3:4200/api", "http://10.1.2.3:4200"),
    ],
)  # fmt: skip
def test_local_prefect_server_addresses(
    tmp_path: Path, host: str, public_url: str | None, api_url: str, ui_url: str
) -> None:
    from ascob_api.prefect_server import LocalPrefectServer

    server = LocalPrefectServer(tmp_path, host=host, port=4200, public_url=public_url)
    assert (server.api_url, server.ui_url) == (api_url, ui_url)


def test_prefect_host_setting_reaches_the_local_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ascob serve`` builds its local Prefect server from ASCOB_PREFECT_HOST (the server's
    start is replaced: the end-to-end test starts a real one)."""
    import ascob_api.prefect_server as prefect_server
    from ascob_api.cli import _prepare
    from ascob_api.settings import Settings

    started: list[tuple[str, str, str]] = []

    def start(self: prefect_server.LocalPrefectServer, timeout: float = 0) -> str:
        started.append((self.host, self.api_url, self.ui_url))
        return self.api_url

    monkeypatch.setattr(prefect_server.LocalPrefectServer, "start", start)
    # _prepare sets these in os.environ: set-then-delete makes monkeypatch restore them
    for name in [
        "PREFECT_API_URL",
        "ASCOB_PUBLIC_PREFECT_URL",
        *prefect_server.prefect_env(tmp_path),
    ]:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("ASCOB_PREFECT_HOST", "0.0.0.0")
    monkeypatch.setenv("ASCOB_PREFECT_PORT", "14200")
    _prepare(Settings(home=tmp_path), start_local_prefect=True)
    assert started == [("0.0.0.0", "http://127.0.0.1:14200/api", "http://localhost:14200")]
    assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:14200/api"
