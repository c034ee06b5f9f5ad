"""The Python client and the ``ascob`` command line against a real ``ascob serve``: every method
and command, exit codes, ``logs -f`` on a job that prints while it runs, a dropped stream resumed,
and errors shown as the server's message."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ascob_api.client import (
    AsyncClient,
    AuthError,
    Client,
    Conflict,
    Event,
    InvalidRequest,
    JobSpec,
    NotFound,
    WaitTimeout,
)
from tests.harness import ROOT_TOKEN as ROOT
from tests.harness import Ascob

DUMMY = "dummyBackend"
LINES = "".join(f"line {i}\n" for i in range(1, 7))


@pytest.fixture
def client(ascob: Ascob) -> Iterator[Client]:
    with Client(ascob.url, ROOT) as made:
        yield made


def cli(
    ascob: Ascob, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``ascob ARGS`` as a person would run it (ASCOB_URL / ASCOB_TOKEN from the environment)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ASCOB_")}
    full = {**base, "ASCOB_URL": ascob.url, "ASCOB_TOKEN": ROOT, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ascob_api.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


def spec(**labels: str) -> JobSpec:
    builder = JobSpec.builder("alice").description("client test").backend(DUMMY)
    for k, v in labels.items():
        builder = builder.label(k, v)
    return builder.build()


# ---------------------------------------------------------------------- the library


def test_builder_as_the_original(client: Client) -> None:
    built = (
        JobSpec.builder("alice")
        .description("restart web")
        .label("_execution_backend_id", DUMMY)
        .parameter("ENV", "prod")
        .lock(f"web-{uuid.uuid4().hex[:6]}")
        .manual_start()
        .build()
    )
    run_id = client.submit(built)
    info = client.get(run_id)
    assert (
        info.status.value == "DEFINED" and info.manual_start and info.parameters == {"ENV": "prod"}
    )
    client.upload(run_id, "in.txt", b"hello")
    assert client.start(run_id).id == run_id
    final = client.wait(run_id, timeout=60)
    assert final.status.value == "SUCCEDED"
    again = client.resubmit(run_id, "bob")
    assert client.wait(again, timeout=60).submitter == "bob"
    assert client.refresh(again).status.value == "SUCCEDED"
    assert [a.action for a in client.audit(run_id)][-1] == "submit"
    assert client.callbacks(run_id) == []


def test_submit_idempotently_search_and_stop(client: Client) -> None:
    key = uuid.uuid4().hex
    first = client.submit(spec(status="RUNNING"), idempotency_key=key)
    assert client.submit(spec(status="RUNNING"), idempotency_key=key) == first
    with pytest.raises(Conflict) as conflict:
        client.submit(spec(status="FAILED"), idempotency_key=key)
    assert f"run {first}" in conflict.value.message
    stopped = client.stop(first, force=True)
    assert stopped.status.value in ("ABORTING", "ABORTED")
    assert client.wait(first, timeout=60).status.value == "ABORTED"
    found = list(client.search(submitter="alice", statuses=["ABORTED"], page_size=2))
    assert first in [i.id for i in found]
    ids = [i.id for i in found]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))  # paged, newest first


def test_errors_carry_the_servers_status_and_message(ascob: Ascob, client: Client) -> None:
    with pytest.raises(NotFound) as missing:
        client.get(987_654_321)
    assert missing.value.status == 404 and "987654321" in missing.value.message
    with pytest.raises(InvalidRequest) as invalid:
        client.submit({"labels": {"_execution_backend_id": "nope"}})
    assert "nope" in invalid.value.message
    with Client(ascob.url, "not-a-token") as stranger, pytest.raises(AuthError):
        stranger.get(1)
    with pytest.raises(WaitTimeout):
        client.wait(client.submit(spec(status="RUNNING")), timeout=1)


def test_locks_backends_tokens_whoami(client: Client) -> None:
    assert client.locks()["store"] == "sql"
    assert DUMMY in [b["id"] for b in client.backends()]
    name = f"bot-{uuid.uuid4().hex[:6]}"
    secret = client.create_token(name, ["job_run_read"], expiry=600)
    assert name in [t.identifier for t in client.tokens()]
    with Client(client.url, secret) as bot:
        assert bot.whoami()["identifier"] == name
    client.revoke_token(name)
    assert name not in [t.identifier for t in client.tokens()]


def test_follow_yields_status_and_output_and_resumes_after_a_drop(ascob: Ascob) -> None:
    """A proxy in front of ASCOB drops the first event stream mid-way; follow() resumes after
    the last event it saw: every line once, in order."""
    drops = {"left": 1}

    class Dropping(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = self.inner.handle_request(request)
            if not request.url.path.endswith("/events") or drops["left"] == 0:
                return response
            drops["left"] -= 1
            stream = response.stream

            def cut() -> Iterator[bytes]:
                seen = 0
                for chunk in stream:  # type: ignore[union-attr]
                    yield chunk
                    seen += chunk.count(b"event: output")
                    if seen >= 2:
                        raise httpx.ReadError("connection dropped", request=request)

            return httpx.Response(
                response.status_code, headers=response.headers, stream=_Iter(cut())
            )

    with Client(ascob.url, ROOT, transport=Dropping()) as client:
        run_id = client.submit(spec(output=LINES, progressive="true", duration="3"))
        events = list(client.follow(run_id, timeout=60))
    lines = [e.line for e in events if e.kind == "output"]
    assert lines == [f"line {i}" for i in range(1, 7)]
    assert drops["left"] == 0
    assert events[-1].kind == "end" and events[-1].run is not None
    assert events[-1].run.status.value == "SUCCEDED"
    assert any(e.kind == "status" for e in events)


class _Iter(httpx.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks


def test_async_client(ascob: Ascob) -> None:
    async def go() -> tuple[str, list[Event]]:
        async with AsyncClient(ascob.url, ROOT) as client:
            run_id = await client.submit(spec(output="a\nb\n", duration="1"))
            events = [e async for e in client.follow(run_id, timeout=60)]
            final = await client.wait(run_id, timeout=30)
            found = [i.id async for i in client.search(submitter="alice", page_size=3)]
            assert run_id in found
            return final.status.value, events

    status, events = asyncio.run(go())
    assert status == "SUCCEDED"
    assert [e.line for e in events if e.kind == "output"] == ["a", "b"]


def test_settings_from_the_environment(ascob: Ascob, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASCOB_URL", ascob.url)
    monkeypatch.setenv("ASCOB_TOKEN", ROOT)
    with Client() as client:
        assert client.whoami()["identifier"] == "root"


# ---------------------------------------------------------------------- the command line


def test_cli_submit_wait_and_exit_codes(ascob: Ascob) -> None:
    ok = cli(ascob, "submit", "--backend", DUMMY, "-d", "cli ok", "--wait", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "SUCCEDED"
    failed = cli(ascob, "submit", "--backend", DUMMY, "--label", "status=FAILED", "--wait")
    assert failed.returncode == 1, failed.stderr
    assert "FAILED" in failed.stdout
    aborted = cli(ascob, "submit", "--backend", DUMMY, "--label", "status=ABORTED", "--wait")
    assert aborted.returncode == 3
    doubt = cli(ascob, "submit", "--backend", DUMMY, "--label", "doubt=true", "--wait")
    assert doubt.returncode == 4, doubt.stdout + doubt.stderr
    hanging = cli(
        ascob, "submit", "--backend", DUMMY, "--label", "status=RUNNING", "--wait", "--timeout", "2"
    )
    assert hanging.returncode == 5
    usage = cli(ascob, "submit", "--label", "nokeyvalue")
    assert usage.returncode == 2 and "KEY=VALUE" in usage.stderr
    denied = cli(ascob, "get", "1", env={"ASCOB_TOKEN": "wrong"})
    assert denied.returncode == 6 and "invalid or expired token" in denied.stderr
    down = cli(ascob, "get", "1", env={"ASCOB_URL": "http://127.0.0.1:9"})
    assert down.returncode == 7
    missing = cli(ascob, "get", "99999999")
    assert missing.returncode == 8 and "run 99999999 not found" in missing.stderr
    assert ROOT not in "".join(p.stdout + p.stderr for p in (ok, failed, denied, missing))


def test_cli_spec_from_stdin_files_logs_follow(ascob: Ascob, tmp_path: Path) -> None:
    data = tmp_path / "input.txt"
    data.write_text("payload")
    body = json.dumps(
        {"jobSpec": {"description": "from stdin", "labels": {"_execution_backend_id": DUMMY}}}
    )
    r = cli(ascob, "submit", "-f", "-", "--file", f"input.txt={data}", "--json", stdin=body)
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["runId"]
    info = Client(ascob.url, ROOT).wait(run_id, timeout=60)
    assert info.status.value == "SUCCEDED" and info.description == "from stdin"
    live = cli(
        ascob,
        "submit",
        "--backend",
        DUMMY,
        "--label",
        f"output={LINES}",
        "--label",
        "progressive=true",
        "--label",
        "duration=3",
        "--follow",
    )
    assert live.returncode == 0, live.stderr
    assert [ln for ln in live.stdout.splitlines() if ln.startswith("line ")] == [
        f"line {i}" for i in range(1, 7)
    ]
    assert "RUNNING" in live.stderr  # the status as it changes
    started = Client(ascob.url, ROOT).submit(spec(output=LINES, progressive="true", duration="3"))
    logs = cli(ascob, "logs", "-f", str(started))
    assert logs.returncode == 0
    assert [ln for ln in logs.stdout.splitlines() if ln.startswith("line ")] == [
        f"line {i}" for i in range(1, 7)
    ]
    assert cli(ascob, "logs", str(started)).stdout.endswith("line 6\n")
    client = Client(ascob.url, ROOT)
    plain = client.submit(spec(output="a last line without newline"))
    client.wait(plain, timeout=60)
    assert cli(ascob, "logs", str(plain)).stdout == "a last line without newline\n"


def test_cli_other_commands(ascob: Ascob, tmp_path: Path) -> None:
    manual = cli(ascob, "submit", "--backend", DUMMY, "--manual-start", "--json")
    run_id = json.loads(manual.stdout)["runId"]
    assert cli(ascob, "start", str(run_id)).returncode == 0
    assert cli(ascob, "wait", str(run_id), "--timeout", "60").returncode == 0
    got = cli(ascob, "get", str(run_id), "--json")
    assert json.loads(got.stdout)["status"] == "SUCCEDED"
    again = cli(ascob, "resubmit", str(run_id), "--submitter", "bob", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["runId"] > run_id
    hanging = json.loads(
        cli(ascob, "submit", "--backend", DUMMY, "--label", "status=RUNNING", "--json").stdout
    )["runId"]
    assert cli(ascob, "stop", str(hanging), "--force").returncode == 0
    assert cli(ascob, "wait", str(hanging), "--timeout", "60").returncode == 3
    assert cli(ascob, "refresh", str(run_id)).returncode == 0
    assert "bob" in cli(ascob, "search", "--submitter", "bob").stdout
    assert "sql" in cli(ascob, "locks").stdout
    assert DUMMY in cli(ascob, "backends").stdout
    assert "root" in cli(ascob, "whoami").stdout
    assert "submit" in cli(ascob, "audit", str(run_id)).stdout
    name = f"cli-{uuid.uuid4().hex[:6]}"
    secret = cli(ascob, "tokens", "create", name, "--permission", "job_run_read").stdout.strip()
    assert secret and name in cli(ascob, "tokens", "list").stdout
    assert secret not in cli(ascob, "tokens", "list").stdout
    assert cli(ascob, "tokens", "revoke", name).returncode == 0
    # a named profile from the client config file; the token read from the variable it names
    config = tmp_path / "client.toml"
    config.write_text(f'[profiles.prod]\nurl = "{ascob.url}"\ntoken_env = "PROD_TOKEN"\n')
    env = {
        "ASCOB_CLIENT_CONFIG": str(config),
        "PROD_TOKEN": ROOT,
        "ASCOB_URL": "",
        "ASCOB_TOKEN": "",
    }
    viaprofile = cli(ascob, "--profile", "prod", "whoami", env=env)
    assert viaprofile.returncode == 0 and "root" in viaprofile.stdout
    unknown = cli(ascob, "--profile", "nope", "whoami", env=env)
    assert unknown.returncode == 2 and "prod" in unknown.stderr
