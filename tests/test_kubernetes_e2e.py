"""kubernetesBackend through ``ascob serve``: configured from ASCOB_CONFIG, the token from the
environment, against the fake Kubernetes API server on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.fake_kubernetes import FakeKubernetes
from tests.harness import Ascob, PrefectServer

LINES = ["compiling", "testing", "done"]
ENV = {"E2E_K8S_TOKEN": "k8s-secret"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeKubernetes]:
    server = FakeKubernetes(namespaces=("batch",)).start()
    server.add_image("e2e/report:1", lines=LINES, line_interval=0.2, start_delay=0.5)
    server.add_image("e2e/forever:1", lines=LINES, hang=True)
    server.add_image("e2e/slow:1", lines=[f"part {i}" for i in range(10)], line_interval=1.0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def config(workdir: Path, fake: FakeKubernetes) -> Path:
    path = workdir / f"k8s-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(
        f"""
[kubernetes.cluster]
url = "{fake.url}"
token_env = "E2E_K8S_TOKEN"
namespace = "batch"
timeout = 2

[kubernetes.cluster.templates.report]
image = "e2e/report:1"
command = ["report", "--all"]
backoff_limit = 0

[kubernetes.cluster.templates.forever]
image = "e2e/forever:1"
command = "sleep infinity"

[kubernetes.cluster.templates.slow]
image = "e2e/slow:1"
"""
    )
    return path


@pytest.fixture(scope="module")
def app(workdir: Path, prefect_server: PrefectServer, config: Path) -> Iterator[Ascob]:
    server = Ascob(workdir, prefect_server.api_url, env={"ASCOB_CONFIG": str(config), **ENV})
    server.start()
    yield server
    server.stop()


def spec(template: str, **parameters: str) -> dict[str, object]:
    return {
        "description": f"kubernetes e2e {template}",
        "submitter": "carol",
        "labels": {"kubernetes_template": template},
        "parameters": parameters,
    }


def test_job_runs_to_succeded_with_its_output(app: Ascob, fake: FakeKubernetes) -> None:
    run_id = app.submit(spec("report", GREETING="hello"))
    app.wait_status(run_id, "SUCCEDED")
    r = app.http.get(f"/api/runs/{run_id}/output.txt")
    assert r.status_code == 200
    assert r.text == "GREETING=hello\ncompiling\ntesting\ndone\n"
    assert r.headers["X-Ascob-More"] == "false"
    created = [j for j in fake.created if j.body["metadata"]["name"].startswith(f"ascob-{run_id}-")]
    assert len(created) == 1
    env = created[0].spec["template"]["spec"]["containers"][0]["env"]
    assert {"name": "ASCOB_RUN_ID", "value": str(run_id)} in env


def test_parameters_that_cannot_be_env_vars_fail_the_run(app: Ascob) -> None:
    run_id = app.submit(spec("report", **{"NOT-AN-ENV-VAR": "x"}))
    info = app.wait_status(run_id, "FAILED", "IN_DOUBT")
    assert info["status"] == "FAILED"
    assert "environment variables" in app.http.get(f"/api/runs/{run_id}/output.txt").text


def test_unknown_template_is_a_400_at_submission(app: Ascob) -> None:
    r = app.http.post("/api/runs", json={"jobSpec": spec("nope")})
    assert r.status_code == 400
    assert "nope" in r.json()["error"]


@pytest.mark.parametrize("force", [False, True], ids=["suspend", "forced"])
def test_delete_stops_the_job_and_ends_aborted(
    app: Ascob, fake: FakeKubernetes, force: bool
) -> None:
    run_id = app.submit(spec("forever"))
    app.wait_status(run_id, "RUNNING")
    r = app.http.delete(f"/api/runs/{run_id}", params={"force": str(force).lower()})
    assert r.status_code == 200
    app.wait_status(run_id, "ABORTED")
    job = next(j for j in fake.created if j.name.startswith(f"ascob-{run_id}-"))
    deletes = [q for m, p, q in fake.requests if m == "DELETE" and p.endswith(job.name)]
    if force:
        assert len(deletes) == 1 and "propagationPolicy=Foreground" in deletes[0]
    else:
        assert job.suspended_at is not None and not deletes
    assert not fake.orphans


def test_restart_in_the_middle_reattaches(
    workdir: Path, prefect_server: PrefectServer, config: Path, fake: FakeKubernetes
) -> None:
    own = Ascob(workdir, prefect_server.api_url, env={"ASCOB_CONFIG": str(config), **ENV})
    own.start()
    try:
        run_id = own.submit(spec("slow"))
        own.wait_status(run_id, "RUNNING")
        own.kill()
        own.restart()
        own.wait_status(run_id, "SUCCEDED", timeout=90)
        # this installation's run ids start again at 1: the hash in the name keeps its Jobs
        # apart from the other installation's; the slow image is this test's alone
        created = [j for j in fake.created if j.script is fake.scripts["e2e/slow:1"]]
        assert len(created) == 1  # followed again, never created twice
        text = own.http.get(f"/api/runs/{run_id}/output.txt").text
        assert text == "".join(f"part {i}\n" for i in range(10))
    finally:
        own.stop()
