"""A backend is a package: one built outside the repo, installed apart from ASCOB, runs jobs
through ``ascob serve``; a plugin whose import fails is reported and the others keep working."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import pytest

from tests.harness import Ascob, PrefectServer

ECHO_MODULE = '''
"""A third-party ASCOB backend: succeeds at once and prints its ``echo`` label."""
from __future__ import annotations

import uuid

from backends import Backend, BackendStatus, OutputChunk, StatusReport


class EchoBackend(Backend):
    id = "echoBackend"

    def accepts(self, labels, description):
        return "echo" in labels

    async def submit(self, job):
        return {"echoId": uuid.uuid4().hex, "text": job.labels.get("echo", "")}

    async def status(self, keys):
        return StatusReport(BackendStatus.SUCCEEDED)

    async def output(self, keys, offset=0):
        data = (keys["text"] + "\\n").encode()
        return OutputChunk(data[offset:].decode(), len(data), False)
'''

BROKEN_MODULE = """
raise ImportError("ascob_broken_plugin needs the module frobnicator, which is not installed")
"""


def write_package(root: Path, dist: str, module: str, source: str, entry: str) -> Path:
    pkg = root / dist
    (pkg / module).mkdir(parents=True)
    (pkg / module / "__init__.py").write_text(dedent(source))
    (pkg / "pyproject.toml").write_text(
        dedent(
            f"""
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "1.0.0"

            [project.entry-points."ascob.backends"]
            {entry}

            [tool.setuptools]
            packages = ["{module}"]
            """
        )
    )
    return pkg


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both plugin packages, built from their own pyproject and installed into a folder that is
    not ASCOB's environment (it joins the service through PYTHONPATH)."""
    root = tmp_path_factory.mktemp("plugins")
    echo = write_package(
        root,
        "ascob-echo-plugin",
        "ascob_echo_plugin",
        ECHO_MODULE,
        'echoBackend = "ascob_echo_plugin:EchoBackend"',
    )
    broken = write_package(
        root,
        "ascob-broken-plugin",
        "ascob_broken_plugin",
        BROKEN_MODULE,
        'brokenBackend = "ascob_broken_plugin:BrokenBackend"',
    )
    site = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(site),
            str(echo),
            str(broken),
        ],
        check=True,
        timeout=300,
    )
    assert list(site.glob("ascob_echo_plugin-1.0.0.dist-info"))
    return site


@pytest.fixture(scope="module")
def app(workdir: Path, prefect_server: PrefectServer, plugin_site: Path) -> Iterator[Ascob]:
    pythonpath = os.pathsep.join(p for p in (str(plugin_site), os.environ.get("PYTHONPATH")) if p)
    server = Ascob(workdir, prefect_server.api_url, env={"PYTHONPATH": pythonpath}).start()
    yield server
    server.stop()


def test_the_plugin_is_not_in_ascobs_own_environment(plugin_site: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import ascob_echo_plugin"], capture_output=True, check=False
    )
    assert probe.returncode != 0  # it comes only from the folder it was installed into


def test_a_job_runs_on_the_installed_plugin(app: Ascob) -> None:
    run_id = app.submit(
        {
            "description": "plugin",
            "labels": {"_execution_backend_id": "echoBackend", "echo": "hello from a plugin"},
        }
    )
    app.wait_status(run_id, "SUCCEDED")
    assert app.http.get(f"/api/runs/{run_id}/output.txt").text == "hello from a plugin\n"


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_work(app: Ascob) -> None:
    backends = {b["id"]: b for b in app.http.get("/api/backends").json()}
    broken = backends["brokenBackend"]
    assert broken["state"] == "failed"
    assert "frobnicator" in broken["error"]
    assert backends["echoBackend"]["state"] == "loaded"
    assert backends["dummyBackend"]["state"] == "loaded"
    assert "brokenBackend failed to load" in app.proc.tail(400)
    run_id = app.submit(
        {"description": "dummy", "labels": {"_execution_backend_id": "dummyBackend"}}
    )
    app.wait_status(run_id, "SUCCEDED")
    refused = app.http.post(
        "/api/runs", json={"jobSpec": {"labels": {"_execution_backend_id": "brokenBackend"}}}
    )
    assert refused.status_code == 400
