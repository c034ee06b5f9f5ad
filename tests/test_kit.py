"""The backend kit (backends.kit): instances isolated from each other, the one error pair and
its translation, the one "outcome unknown", and the example backend of docs/backends.md."""

from __future__ import annotations

import asyncio
import importlib
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import backends
from backends import (
    BackendContext,
    BackendError,
    BackendRegistry,
    BackendStatus,
    BackendUnavailable,
    Job,
    JobNotFound,
    OutcomeUnknown,
    SpecRejected,
    SubmitRefused,
    kit,
)
from tests.jobs_backend import JobsBackend

ROOT = Path(__file__).resolve().parent.parent


class Instance(kit.RestInstance):
    kind = "acme"


def parse(name: str, raw: Any) -> Instance:
    return Instance.parse(name, raw)


# --------------------------------------------------------------------------- instances


def test_a_bad_instance_is_refused_with_its_reason_and_the_others_work() -> None:
    found = kit.Instances("acme", {"bad": {"timeout": 5}, "good": {"url": "http://a"}}, parse)
    assert list(found) == ["good"] and found["good"].url == "http://a"
    assert found.broken == {"bad": "[acme.bad] needs a url"}
    with pytest.raises(SpecRejected, match=r"acme instance 'bad' is misconfigured: .*needs a url"):
        found.for_labels({"acme_instance": "bad"})
    assert found.for_labels({"acme_instance": "good"}).name == "good"
    with pytest.raises(SpecRejected, match=r"acme_instance is required \(configured: bad, good\)"):
        found.for_labels({})  # two configured, even if one is broken: say which
    with pytest.raises(SpecRejected, match=r"'elsewhere' is not configured.*\[acme.<name>\]"):
        found.for_labels({"acme_instance": "elsewhere"})


def test_a_single_instance_needs_no_label() -> None:
    assert kit.Instances("acme", {"only": {"url": "http://a"}}, parse).for_labels({}).name == "only"
    broken = kit.Instances("acme", {"only": {"url": ""}}, parse)
    with pytest.raises(SpecRejected, match="misconfigured"):
        broken.for_labels({})


def test_identification_keys_name_an_instance_that_may_come_back() -> None:
    found = kit.Instances("acme", {"bad": [], "good": {"url": "http://a"}}, parse)
    assert found.for_keys({"acmeInstance": "good"}).name == "good"
    with pytest.raises(JobNotFound, match="acmeInstance"):
        found.for_keys({})
    with pytest.raises(BackendUnavailable, match="'gone' is no longer configured"):
        found.for_keys({"acmeInstance": "gone"})
    with pytest.raises(BackendUnavailable, match=r"'bad' is misconfigured: .*must be a table"):
        found.for_keys({"acmeInstance": "bad"})
    with pytest.raises(JobNotFound, match="acmeJobId"):
        kit.required({"acmeInstance": "good"}, "acmeInstance", "acmeJobId")


@pytest.mark.parametrize(
    ("section", "bad", "good", "labels"),
    [
        ("jenkins", {"url": "http://j", "merge_wait": "soon"}, {"url": "http://j"}, "jenkins"),
        ("rundeck", {"url": "http://r", "api_version": "x"}, {"url": "http://r"}, "rundeck"),
        ("gitlab", {"timeout": 3}, {"url": "http://g"}, "gitlab"),
        ("airflow", {"url": "http://a", "api": "v9"}, {"url": "http://a"}, "airflow"),
    ],
)
def test_every_backend_isolates_a_bad_instance(
    tmp_path: Path, section: str, bad: dict[str, Any], good: dict[str, Any], labels: str
) -> None:
    """Through the registry, as ASCOB loads them: the backend loads, says which instance is
    misconfigured, refuses specs for it and takes specs for the others."""
    registry = BackendRegistry.load(tmp_path, {section: {"bad": bad, "good": good}})
    state = next(s for s in registry.states if s.id == f"{section}Backend")
    assert state.state == "loaded", state
    assert state.error is not None and state.error.startswith("instance bad is misconfigured")
    backend = registry.get(state.id)
    with pytest.raises(SpecRejected, match="'bad' is misconfigured"):
        backend.instances.for_labels({f"{labels}_instance": "bad"})  # type: ignore[attr-defined]
    assert backend.instances.for_labels({f"{labels}_instance": "good"}).name == "good"  # type: ignore[attr-defined]


def test_statuses_reads_a_table_per_ascob_status() -> None:
    table = kit.statuses(queued=("new", "pending"), failed=("error",), aborted=("canceled",))
    assert table == {
        "new": BackendStatus.QUEUED,
        "pending": BackendStatus.QUEUED,
        "error": BackendStatus.FAILED,
        "canceled": BackendStatus.ABORTED,
    }


# --------------------------------------------------------------------------- errors


def answer(status: int) -> kit.SystemHTTPError:
    return kit.SystemHTTPError("acme", status, "said so")


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (answer(404), JobNotFound, "acme job 7: HTTP 404: said so"),
        (answer(500), BackendUnavailable, "acme job 7: HTTP 500: said so"),
        (answer(401), BackendUnavailable, "acme job 7: HTTP 401: said so"),
        (httpx.ConnectError("refused"), BackendUnavailable, "acme job 7: ConnectError: refused"),
        (kit.SystemProtocolError("acme", "GET x: malformed JSON"), BackendUnavailable, "malformed"),
    ],
)
def test_following_a_job_a_404_is_not_found_and_anything_else_may_pass(
    exc: Exception, kind: type[Exception], text: str
) -> None:
    with pytest.raises(kind, match=re.escape(text)) as info, kit.following("acme job 7"):
        raise exc
    assert info.value.__cause__ is exc


def test_following_without_missing_reads_a_404_as_transient() -> None:
    with pytest.raises(BackendUnavailable), kit.following("acme stop", missing=()):
        raise answer(404)
    with pytest.raises(BackendUnavailable, match="KeyError"), kit.following("x", also=(KeyError,)):
        raise KeyError("id")
    with pytest.raises(JobNotFound, match="as it was"), kit.following("acme"):
        raise JobNotFound("as it was")  # the contract's own errors pass unchanged


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (answer(404), SubmitRefused, "acme: no such job (said so)"),
        (answer(503), BackendUnavailable, "acme: HTTP 503: said so"),
        (answer(403), SubmitRefused, "acme: HTTP 403: said so"),
        (httpx.ReadTimeout("slow"), BackendUnavailable, "cannot read the job (ReadTimeout: slow)"),
        (kit.SystemProtocolError("acme", "bad"), SubmitRefused, "cannot read the job"),
    ],
)
def test_before_sending_a_failure_defers_or_refuses(
    exc: Exception, kind: type[Exception], text: str
) -> None:
    with (
        pytest.raises(kind, match=re.escape(text)) as info,
        kit.before_sending("acme", "the job", missing="no such job"),
    ):
        raise exc
    assert type(info.value) is kind


def test_one_outcome_unknown_in_the_contract() -> None:
    assert "OutcomeUnknown" in backends.__all__ and kit.OutcomeUnknown is OutcomeUnknown
    assert not issubclass(OutcomeUnknown, BackendError)  # neither refused nor transient: IN_DOUBT
    modules = [importlib.import_module(f"backends.{name}") for name in ("github", "awx", "httpapi")]
    for old in ("DispatchOutcomeUnknown", "LaunchOutcomeUnknown", "StartOutcomeUnknown"):
        assert not any(hasattr(module, old) for module in modules)


# --------------------------------------------------------------------------- the client


def acme_app() -> Starlette:
    async def job(request: Request) -> Response:
        if request.headers.get("authorization") != "Bearer t0ken":
            return JSONResponse({"message": "who are you"}, status_code=401)
        found = request.path_params["id"]
        if found == "broken":
            return Response('{"oops": ', media_type="application/json")
        if found == "list":
            return JSONResponse([1, 2])
        return JSONResponse({"id": found})

    return Starlette(routes=[Route("/api/jobs/{id}", job)])


class AcmeClient(kit.ApiClient):
    system = "acme"
    api_path = "api"

    def error_message(self, response: httpx.Response) -> str:
        return str(response.json().get("message"))


async def test_an_api_client_raises_the_kit_errors_named_after_its_system() -> None:
    transport = httpx.ASGITransport(app=acme_app())
    client = AcmeClient("http://acme.test/", "t0ken", transport=transport)
    try:
        assert await client.object("GET", "jobs/5") == {"id": "5"}
        with pytest.raises(kit.SystemProtocolError, match="GET jobs/broken: malformed JSON") as bad:
            await client.object("GET", "jobs/broken")
        assert bad.value.system == "acme"
        with pytest.raises(kit.SystemProtocolError, match="expected a JSON object"):
            await client.object("GET", "jobs/list")
    finally:
        await client.aclose()
    stranger = AcmeClient("http://acme.test", "wrong", transport=transport)
    try:
        with pytest.raises(kit.SystemHTTPError) as info:
            await stranger.object("GET", "jobs/5")
        assert (info.value.system, info.value.status_code) == ("acme", 401)
        assert str(info.value) == "HTTP 401: who are you"
    finally:
        await stranger.aclose()


async def test_clients_are_made_once_per_instance_and_event_loop() -> None:
    made: list[str] = []

    class Closable:
        async def aclose(self) -> None:
            made.append("closed")

    clients: kit.ClientsPerLoop[Closable] = kit.ClientsPerLoop()
    first = clients.get("a", Closable)
    assert clients.get("a", Closable) is first and clients.get("b", Closable) is not first

    async def elsewhere() -> Closable:
        return clients.get("a", Closable)

    other = await asyncio.to_thread(lambda: asyncio.run(elsewhere()))
    assert other is not first  # another loop, another client
    await clients.aclose()
    assert made == ["closed", "closed"]


# --------------------------------------------------------------------------- the example


async def test_the_example_backend_maps_a_lost_start_to_outcome_unknown(tmp_path: Path) -> None:
    async def refuse(request: Request) -> Response:
        return PlainTextResponse("down", status_code=502)

    transport = httpx.ASGITransport(
        app=Starlette(routes=[Route("/jobs", refuse, methods=["POST"])])
    )
    backend = JobsBackend(BackendContext(tmp_path, {"main": {"url": "http://j"}}), transport)
    job = Job(1, None, None, {"jobs_task": "t"}, {}, "w")
    try:
        with pytest.raises(OutcomeUnknown, match="start answered HTTP 502: down"):
            await backend.submit(job)
    finally:
        await backend.aclose()


def test_docs_show_the_example_backend_whole() -> None:
    """docs/backends.md's "Writing a backend" shows tests/jobs_backend.py as it is."""
    docs = (ROOT / "docs" / "backends.md").read_text()
    shown = re.search(r"<!-- tests/jobs_backend.py -->\n```python\n(.*?)```", docs, re.S)
    assert shown is not None, "docs/backends.md no longer shows tests/jobs_backend.py"
    assert shown.group(1) == (ROOT / "tests" / "jobs_backend.py").read_text()
