"""One contract suite for every backend the registry finds (``ascob.backends`` entry points).

Each backend has an adapter in ``tests/contract/`` that starts its stand-in (a fake server on
loopback, or nothing for the dummy), prepares jobs on its side and returns the labels that select
them. A backend registered without an adapter fails the suite: a new backend must say how to run
its contract. The example backend of docs/backends.md (``EXAMPLES``, not an entry point) runs
the same suite, so the documentation's backend keeps working.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from backends import (
    BACKEND_ID_LABEL,
    Backend,
    BackendContext,
    BackendRegistry,
    BackendStatus,
    Job,
    SpecRejected,
    StatusReport,
    SubmitRefused,
)
from backends.registry import ENTRY_POINT_GROUP, BackendState
from tests.contract import LINES, Adapter, load_adapters
from tests.jobs_backend import JobsBackend

EXAMPLES: dict[str, type[Backend]] = {JobsBackend.id: JobsBackend}
BACKEND_IDS = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} | set(EXAMPLES))


ADAPTERS = load_adapters()


@pytest.fixture(scope="module", params=BACKEND_IDS)
def adapter(request: pytest.FixtureRequest) -> Iterator[Adapter]:
    if request.param not in ADAPTERS:
        pytest.fail(f"backend {request.param} has no contract adapter in tests/contract/")
    made = ADAPTERS[request.param]()
    made.start()
    yield made
    made.stop()


def load_registry(adapter: Adapter, data_dir: Path) -> BackendRegistry:
    example = EXAMPLES.get(adapter.backend_id)
    if example is not None:  # built as the registry builds a plugin
        section = example.config_section or example.id
        context = BackendContext(data_dir / example.id, adapter.config().get(section, {}))
        return BackendRegistry({example.id: example(context)}, [BackendState(example.id, "loaded")])
    registry = BackendRegistry.load(data_dir, adapter.config())
    failed = [s for s in registry.states if s.state != "loaded"]
    assert not failed, failed
    return registry


@pytest.fixture
async def backend(adapter: Adapter, tmp_path: Path) -> Any:
    registry = load_registry(adapter, tmp_path)
    yield registry.get(adapter.backend_id)
    await registry.aclose()


_run_ids = iter(range(10_000, 10**9))


def job(labels: Mapping[str, str], parameters: Mapping[str, str] | None = None) -> Job:
    return Job(
        run_id=next(_run_ids),
        description="contract",
        submitter="tester",
        labels=dict(labels),
        parameters=dict(parameters or {}),
        webhook_id=uuid.uuid4().hex,
    )


async def wait_final(backend: Backend, keys: Mapping[str, str], within: float = 20) -> StatusReport:
    deadline = time.monotonic() + within
    while True:
        report = await backend.status(keys)
        if report.status.is_final:
            return report
        assert time.monotonic() < deadline, f"still {report} after {within} s"
        await asyncio.sleep(0.1)


async def wait_status(
    backend: Backend, keys: Mapping[str, str], wanted: BackendStatus, within: float = 20
) -> None:
    deadline = time.monotonic() + within
    while (report := await backend.status(keys)).status is not wanted:
        assert time.monotonic() < deadline, f"still {report}, expected {wanted}"
        await asyncio.sleep(0.05)


async def read_incrementally(
    backend: Backend, keys: Mapping[str, str], within: float = 20
) -> tuple[str, int]:
    """The whole output, read from offset to offset as a live client would."""
    text, offset, calls = "", 0, 0
    deadline = time.monotonic() + within
    while True:
        chunk = await backend.output(keys, offset)
        calls += 1
        assert chunk.next_offset >= offset
        text, offset = text + chunk.text, chunk.next_offset
        if not chunk.more:
            return text, calls
        assert time.monotonic() < deadline, f"output still coming after {within} s: {text!r}"
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- the contract


def test_registry_selects_it_by_id(adapter: Adapter, tmp_path: Path) -> None:
    registry = load_registry(adapter, tmp_path)
    labels = {**adapter.labels("succeeded"), BACKEND_ID_LABEL: adapter.backend_id}
    assert registry.select(labels, "contract").id == adapter.backend_id


def test_invalid_labels_are_rejected_at_submission(adapter: Adapter, tmp_path: Path) -> None:
    registry = load_registry(adapter, tmp_path)
    with pytest.raises(SpecRejected):
        registry.select({**adapter.invalid_labels(), BACKEND_ID_LABEL: adapter.backend_id}, None)


async def test_job_succeeds_and_its_output_reads_in_pieces(
    adapter: Adapter, backend: Backend
) -> None:
    keys = await backend.submit(job(adapter.labels("succeeded")))
    assert keys and all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items())
    live, _ = await read_incrementally(backend, keys)
    report = await wait_final(backend, keys)
    assert report.status is BackendStatus.SUCCEEDED, report
    whole = await backend.output(keys, 0)
    assert not whole.more
    assert live == whole.text  # no line lost or repeated across offsets
    positions = [whole.text.index(line) for line in LINES]
    assert positions == sorted(positions)
    rest = await backend.output(keys, whole.next_offset)
    assert rest.text == "" and not rest.more


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
async def test_output_is_append_only_while_the_job_runs(
    adapter: Adapter, backend: Backend, outcome: str
) -> None:
    """A byte once served at an offset never changes (docs/backends.md): read from 0 and from the
    last offset at every look while the job runs; each text read from 0 starts with the one
    before, and both readings end as the final text."""
    keys = await backend.submit(job(adapter.labels(outcome)))
    seen, followed, offset = "", "", 0
    deadline = time.monotonic() + 20
    while True:
        whole = await backend.output(keys, 0)
        assert whole.text.startswith(seen), (seen, whole.text)
        seen = whole.text
        chunk = await backend.output(keys, offset)
        assert chunk.next_offset >= offset
        followed, offset = followed + chunk.text, chunk.next_offset
        assert seen.startswith(followed) or followed.startswith(seen), (seen, followed)
        if not chunk.more and not whole.more:
            break
        assert time.monotonic() < deadline, f"output still coming after 20 s: {seen!r}"
        await asyncio.sleep(0.05)
    await wait_final(backend, keys)
    final = await backend.output(keys, 0)
    assert final.text == seen == followed


async def test_failing_job_fails(adapter: Adapter, backend: Backend) -> None:
    keys = await backend.submit(job(adapter.labels("failed")))
    assert (await wait_final(backend, keys)).status is BackendStatus.FAILED


async def test_refused_submission_raises_submit_refused(adapter: Adapter, backend: Backend) -> None:
    with pytest.raises(SubmitRefused) as info:
        await backend.submit(job(adapter.refused_labels()))
    assert str(info.value)  # the user reads why


@pytest.mark.parametrize("force", [False, True], ids=["clean", "force"])
async def test_stop_aborts_a_running_job(adapter: Adapter, backend: Backend, force: bool) -> None:
    if not backend.can_stop:
        pytest.skip(f"{backend.id} cannot stop jobs")
    keys = await backend.submit(job(adapter.labels("hang")))
    await wait_status(backend, keys, BackendStatus.RUNNING)
    await backend.stop(keys, force=force)
    assert (await wait_final(backend, keys)).status is BackendStatus.ABORTED


async def test_stop_while_queued_aborts(adapter: Adapter, backend: Backend) -> None:
    if not backend.can_stop:
        pytest.skip(f"{backend.id} cannot stop jobs")
    keys = await backend.submit(job(adapter.labels("hang", queued=True)))
    await backend.stop(keys)
    assert (await wait_final(backend, keys)).status is BackendStatus.ABORTED


async def test_identical_submissions_are_separate_jobs(adapter: Adapter, backend: Backend) -> None:
    labels = adapter.labels("succeeded", queued=True)
    first = await backend.submit(job(labels, {"GREETING": "same"}))
    second = await backend.submit(job(labels, {"GREETING": "same"}))
    assert first != second
    for keys in (first, second):
        assert (await wait_final(backend, keys)).status is BackendStatus.SUCCEEDED
    assert adapter.identity(first) != adapter.identity(second)  # two jobs, not one merged


async def test_parameters_reach_the_job(adapter: Adapter, backend: Backend) -> None:
    if not adapter.echoes_parameters:
        pytest.skip(f"{adapter.backend_id} jobs do not print their parameters")
    keys = await backend.submit(job(adapter.labels("succeeded"), {"GREETING": "hello there"}))
    await wait_final(backend, keys)
    assert "GREETING=hello there" in (await backend.output(keys, 0)).text


async def test_a_new_process_reattaches_through_the_keys(
    adapter: Adapter, backend: Backend, tmp_path: Path
) -> None:
    keys = await backend.submit(job(adapter.labels("succeeded", queued=True)))
    other = load_registry(adapter, tmp_path)  # as after a restart: nothing shared but the keys
    try:
        again = other.get(adapter.backend_id)
        assert (await wait_final(again, dict(keys))).status is BackendStatus.SUCCEEDED
        assert LINES[-1] in (await again.output(dict(keys), 0)).text
    finally:
        await other.aclose()
