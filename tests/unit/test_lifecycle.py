"""The flow's steps (ascob_flows.lifecycle) without Prefect: dispatch, re-attach after a crash,
locks of a resumed run, queue expiry. The backend is a recording stand-in: what it saw is the
evidence, not what ASCOB says of itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ascob_api.service import Services
from ascob_flows import lifecycle
from ascob_flows.machine import BEGIN_DISPATCH, KEYS_REPORTED, READY_TO_DISPATCH, RECORD_SUBMISSION
from ascob_flows.retry import Backoff
from ascob_flows.runtime import Runtime
from ascob_flows.status import RunStatus
from backends import (
    Backend,
    BackendContext,
    BackendRegistry,
    BackendStatus,
    BackendUnavailable,
    Job,
    JobNotFound,
    SpecRejected,
    StatusReport,
)
from tests.unit.conftest import submit

log = logging.getLogger("test")


class Recording(Backend):
    """Counts every submission; its jobs run until told otherwise."""

    id: ClassVar[str] = "recordingBackend"
    can_stop: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__(BackendContext(data_dir=Path("/nonexistent")))
        self.submitted: list[int] = []
        self.status_of: dict[str, BackendStatus] = {}

    def accepts(self, labels: Mapping[str, str], description: str | None) -> bool:
        return True

    async def submit(self, job: Job) -> dict[str, str]:
        self.submitted.append(job.run_id)
        self.status_of[f"job-{job.run_id}"] = BackendStatus.RUNNING
        return {"jobId": f"job-{job.run_id}"}

    async def status(self, keys: Mapping[str, str]) -> StatusReport:
        if keys.get("jobId") not in self.status_of:
            raise JobNotFound(f"no job {keys.get('jobId')}")
        return StatusReport(self.status_of[keys["jobId"]])

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        self.status_of[keys["jobId"]] = BackendStatus.ABORTED


@pytest.fixture
def backend() -> Recording:
    return Recording()


@pytest.fixture
def rt(services: Services, backend: Recording) -> Runtime:
    services.backends = BackendRegistry({backend.id: backend}, [])
    return Runtime(
        repo=services.repo, backends=services.backends, locks=services.locks, poll_interval=0.05
    )


def new_run(api: Any, **spec: Any) -> int:
    return submit(api, labels={"_execution_backend_id": "recordingBackend"}, **spec)


class Writes:
    """Counts the repository's writes of one run."""

    def __init__(self, services: Services) -> None:
        self.calls: list[str] = []
        repo = services.repo
        apply = repo.apply

        def counted_apply(run_id: int, step: Any, **kw: Any) -> Any:
            self.calls.append(step.name)
            return apply(run_id, step, **kw)

        repo.apply = counted_apply  # type: ignore[method-assign]
        # the named writes, none of them a status
        for name in ("note", "record_backend_url", "mark_stop_sent", "record_executor"):
            setattr(repo, name, self._counted(name, getattr(repo, name)))

    def _counted(self, name: str, write: Any) -> Any:
        def counted(*args: Any) -> Any:
            self.calls.append(name)
            return write(*args)

        return counted


async def test_dispatch_records_keys_and_status_in_one_write(
    services: Services, api: Any, rt: Runtime, backend: Recording
) -> None:
    run_id = new_run(api, description="one write")
    assert await lifecycle.acquire(rt, run_id, log) == {}
    writes = Writes(services)
    assert await lifecycle.dispatch(rt, run_id, {}, log)
    assert writes.calls == ["begin_dispatch", "record_submission"]
    run = services.repo.get_run(run_id)
    assert run.status == "SUBMITTED" and run.submission_time is not None
    assert run.identification_keys == {"jobId": f"job-{run_id}"}
    assert backend.submitted == [run_id]


async def test_a_run_resumed_mid_dispatch_with_keys_is_reattached_not_in_doubt(
    services: Services, api: Any, rt: Runtime, backend: Recording
) -> None:
    """The executor died after the backend took the job; the job had reported its keys."""
    run_id = new_run(api, description="crash mid dispatch")
    services.repo.apply(run_id, READY_TO_DISPATCH)
    services.repo.apply(run_id, BEGIN_DISPATCH)
    await backend.submit(Job(run_id, None, None, {}, {}, services.repo.get_run(run_id).webhook_id))
    # the job reported its keys through its webhook meanwhile
    services.repo.apply(run_id, KEYS_REPORTED, keys=lambda _: {"jobId": f"job-{run_id}"})
    # a new executor resumes the flow
    assert await lifecycle.acquire(rt, run_id, log) == {}
    assert await lifecycle.dispatch(rt, run_id, {}, log)
    run = services.repo.get_run(run_id)
    assert run.status == "SUBMITTED", run.message
    assert "re-attached" in (run.message or "")
    backend.status_of[f"job-{run_id}"] = BackendStatus.SUCCEEDED
    assert await lifecycle.follow(rt, run_id, log) is RunStatus.SUCCEDED
    assert backend.submitted == [run_id]  # never sent twice


async def test_a_run_resumed_mid_dispatch_without_keys_is_in_doubt(
    services: Services, api: Any, rt: Runtime, backend: Recording
) -> None:
    run_id = new_run(api, description="lost answer")
    services.repo.apply(run_id, READY_TO_DISPATCH)
    services.repo.apply(run_id, BEGIN_DISPATCH)
    assert await lifecycle.dispatch(rt, run_id, {}, log)
    run = services.repo.get_run(run_id)
    assert run.status == "IN_DOUBT" and "does not send it twice" in (run.message or "")
    assert backend.submitted == []


async def test_a_resumed_run_whose_lock_was_taken_never_queues(
    services: Services, api: Any, rt: Runtime, backend: Recording
) -> None:
    """After an outage longer than the lease, another run holds the key: the resumed run says
    so and blocks nobody (no place in the queue)."""
    resumed = new_run(api, description="resumed", locks=[{"key": "db"}])
    services.repo.apply(resumed, READY_TO_DISPATCH)
    services.repo.apply(resumed, BEGIN_DISPATCH)
    services.repo.apply(resumed, RECORD_SUBMISSION, keys=lambda k: {"jobId": "x"})
    other = await services.locks.acquire(9999, ["db"])  # took the key while nobody followed
    tokens = await asyncio.wait_for(lifecycle.acquire(rt, resumed, log), 5)
    assert tokens == {}
    infos = await services.locks.snapshot()
    assert all(resumed not in i.waiting for i in infos)
    assert [i.holder for i in infos if i.key == "db"] == [other.run_id]
    message = services.repo.get_run(resumed).message or ""
    assert "taken by run 9999" in message
    later = asyncio.create_task(services.locks.acquire(10_000, ["db"]))
    await services.locks.release(9999)
    await asyncio.wait_for(later, 5)  # nobody waits behind a ghost place
    await services.locks.release(10_000)


async def test_a_resumed_run_retakes_its_free_locks_without_queueing(
    services: Services, api: Any, rt: Runtime
) -> None:
    resumed = new_run(api, description="resumed", locks=[{"key": "db"}])
    services.repo.apply(resumed, READY_TO_DISPATCH)
    services.repo.apply(resumed, BEGIN_DISPATCH)
    services.repo.apply(resumed, RECORD_SUBMISSION, keys=lambda k: {"jobId": "x"})
    tokens = await asyncio.wait_for(lifecycle.acquire(rt, resumed, log), 5)
    assert set(tokens or {}) == {"db"}
    assert await services.locks.holds(resumed, ["db"])
    await services.locks.release(resumed)


async def test_a_run_that_waits_longer_than_its_max_lock_wait_is_aborted(
    services: Services, api: Any, rt: Runtime, backend: Recording
) -> None:
    holder = new_run(api, description="holder", locks=[{"key": "k"}])
    assert set(await lifecycle.acquire(rt, holder, log) or {}) == {"k"}
    waiter = new_run(api, description="impatient", locks=[{"key": "k"}], maxLockWaitSeconds=1)
    assert await asyncio.wait_for(lifecycle.acquire(rt, waiter, log), 10) is None
    run = services.repo.get_run(waiter)
    assert run.status == "ABORTED"
    assert run.message == f"waited 1 s for locks held by run {holder}"
    assert all(waiter not in i.waiting for i in await services.locks.snapshot())
    assert backend.submitted == []
    await services.locks.release(holder)


async def test_a_spec_refused_at_submission_fails_the_run_not_in_doubt(
    services: Services, api: Any, rt: Runtime, backend: Recording
) -> None:
    async def refuse(job: Job) -> dict[str, str]:
        raise SpecRejected("parameter name 'A-B' is not an environment variable name")

    backend.submit = refuse  # type: ignore[method-assign]
    run_id = new_run(api, description="bad names")
    await lifecycle.acquire(rt, run_id, log)
    await lifecycle.dispatch(rt, run_id, {}, log)
    run = services.repo.get_run(run_id)
    assert run.status == "FAILED" and "A-B" in (run.message or "")


# ---------------------------------------------------------------------- an unavailable backend


class Unavailable(Recording):
    """Unavailable (without taking the job) for its first ``times`` submissions."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times
        self.calls = 0
        self.called = asyncio.Event()

    async def submit(self, job: Job) -> dict[str, str]:
        self.calls += 1
        self.called.set()
        if self.calls <= self.times:
            raise BackendUnavailable(f"HTTP 503 (call {self.calls})")
        return await super().submit(job)


def unavailable_runtime(
    services: Services, backend: Recording, monkeypatch: pytest.MonkeyPatch, retry: float
) -> Runtime:
    monkeypatch.setattr(lifecycle, "DISPATCH", Backoff(first=0.05, cap=0.2))
    services.backends = BackendRegistry({backend.id: backend}, [])
    return Runtime(
        repo=services.repo,
        backends=services.backends,
        locks=services.locks,
        poll_interval=0.05,
        dispatch_retry=retry,
        watch_interval=0.05,
    )


async def test_an_unavailable_backend_gets_the_job_once_it_answers(
    services: Services, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = Unavailable(times=3)
    rt = unavailable_runtime(services, backend, monkeypatch, retry=30)
    run_id = new_run(api, description="backend restarting")
    assert await lifecycle.acquire(rt, run_id, log) == {}
    writes = Writes(services)
    assert await lifecycle.dispatch(rt, run_id, {}, log)
    assert backend.calls == 4 and backend.submitted == [run_id]
    assert writes.calls == ["begin_dispatch", "dispatch_deferred"] * 3 + [
        "begin_dispatch",
        "record_submission",
    ]
    run = services.repo.get_run(run_id)
    assert run.status == "SUBMITTED"
    assert run.message == "sent once recordingBackend was available again"


@pytest.mark.parametrize(
    ("retry", "calls", "message"),
    [
        (0.5, "3 or more", "recordingBackend refused the job: unavailable for 1 s (HTTP 503 (call"),
        (0, "1", "recordingBackend refused the job: unavailable (HTTP 503 (call 1))"),
    ],
    ids=["after-the-retry", "no-retry"],
)
async def test_a_backend_unavailable_for_longer_than_the_retry_fails_the_run(
    services: Services,
    api: Any,
    monkeypatch: pytest.MonkeyPatch,
    retry: float,
    calls: str,
    message: str,
) -> None:
    backend = Unavailable(times=10**6)
    rt = unavailable_runtime(services, backend, monkeypatch, retry=retry)
    run_id = new_run(api, description=f"ASCOB_DISPATCH_RETRY_SECONDS={retry}")
    assert await lifecycle.acquire(rt, run_id, log) == {}
    assert await lifecycle.dispatch(rt, run_id, {}, log)
    run = services.repo.get_run(run_id)
    assert run.status == "FAILED" and backend.submitted == []
    assert (backend.calls >= 3) if calls == "3 or more" else (backend.calls == 1)
    assert (run.message or "").startswith(message), run.message


async def test_a_run_stopped_while_its_backend_is_unavailable_is_aborted_unsent(
    services: Services, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = Unavailable(times=10**6)
    rt = unavailable_runtime(services, backend, monkeypatch, retry=600)
    monkeypatch.setattr(lifecycle, "DISPATCH", Backoff(first=30, cap=30))
    run_id = new_run(api, description="stopped while waiting")
    assert await lifecycle.acquire(rt, run_id, log) == {}
    watcher = asyncio.create_task(rt.watch_statuses())
    try:
        sending = asyncio.create_task(lifecycle.dispatch(rt, run_id, {}, log))
        await asyncio.wait_for(backend.called.wait(), 5)
        await asyncio.sleep(0.3)  # the run is back to PENDING_SUBMIT, waiting 30 s
        assert "sent again in 30 s" in (services.repo.get_run(run_id).message or "")
        stopped = await asyncio.to_thread(api.delete, f"/api/runs/{run_id}")
        assert stopped.status_code == 200, stopped.text
        assert await asyncio.wait_for(sending, 5)  # the stop ends the 30 s wait
    finally:
        watcher.cancel()
    assert services.repo.get_run(run_id).status == "ABORTED"
    assert backend.calls == 1 and backend.submitted == []


class EndedBeforeTheStop(Recording):
    """Rundeck's abort of an execution that has just ended: "failed: Job is not running"."""

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        raise BackendUnavailable("rundeck abort failed: Job is not running")


async def dispatched_with_a_refused_stop(
    services: Services, api: Any
) -> tuple[EndedBeforeTheStop, Runtime, int]:
    """A run dispatched to a backend that refuses every stop."""
    backend = EndedBeforeTheStop()
    services.backends = BackendRegistry({backend.id: backend}, [])
    rt = Runtime(
        repo=services.repo, backends=services.backends, locks=services.locks, poll_interval=0.05
    )
    run_id = new_run(api, description="stop refused")
    assert await lifecycle.acquire(rt, run_id, log) == {}
    assert await lifecycle.dispatch(rt, run_id, {}, log)
    return backend, rt, run_id


async def test_a_stop_that_comes_after_the_job_ended_ends_the_run(
    services: Services, api: Any
) -> None:
    """Found by the soak: the backend refused to stop a job that had just ended, and the run
    stayed ABORTING for ever (holding its locks, so every run behind them waited too)."""
    backend, rt, run_id = await dispatched_with_a_refused_stop(services, api)
    backend.status_of[f"job-{run_id}"] = BackendStatus.SUCCEEDED  # it ends ...
    stopped = await asyncio.to_thread(api.delete, f"/api/runs/{run_id}")  # ... as it is stopped
    assert stopped.status_code == 200, stopped.text
    assert services.repo.get_run(run_id).status == "ABORTING"
    ended = await asyncio.wait_for(lifecycle.follow(rt, run_id, log), 10)
    assert ended is RunStatus.SUCCEDED


async def test_a_stop_that_fails_while_the_job_runs_is_tried_again(
    services: Services, api: Any
) -> None:
    _, rt, run_id = await dispatched_with_a_refused_stop(services, api)
    assert (await asyncio.to_thread(api.delete, f"/api/runs/{run_id}")).status_code == 200
    with pytest.raises(TimeoutError):  # still running: the stop is asked again, the run waits
        await asyncio.wait_for(lifecycle.follow(rt, run_id, log), 1)
    assert services.repo.get_run(run_id).status == "ABORTING"


async def test_a_flow_whose_run_was_taken_over_leaves_its_locks_to_the_new_owner(
    services: Services, api: Any, rt: Runtime, backend: Recording
) -> None:
    """Found by the soak (an etcd majority down made an executor's heartbeat late): executor
    x0's flow still waited for the run's locks when x1 took the run over, got the grant and
    dispatched; x0's wait then ended too, found the run past it, and released the locks of the
    job x1 had just started."""
    blocker = new_run(api, description="blocker", locks=[{"key": "k"}])
    assert set(await lifecycle.acquire(rt, blocker, log) or {}) == {"k"}
    run_id = new_run(api, description="taken over", locks=[{"key": "k"}])
    assert services.repo.claim_for_executor(run_id, "x0", None)
    rt.executor_id = "x0"
    stale = asyncio.create_task(lifecycle.acquire(rt, run_id, log))
    await asyncio.sleep(0.3)
    # x0 looks dead to x1, which takes the run over and dispatches it (its grant is the
    # repository's side here; the key is freed below, so x0's wait ends after x1 moved on)
    assert services.repo.claim_for_executor(run_id, "x1", "x0")
    services.repo.apply(run_id, READY_TO_DISPATCH)
    services.repo.apply(run_id, BEGIN_DISPATCH)
    await services.locks.release(blocker)
    assert await asyncio.wait_for(stale, 5) is None  # x0's flow gives up the run ...
    assert await services.locks.holds(run_id, ["k"])  # ... but not x1's locks
    assert [i.holder for i in await services.locks.snapshot() if i.key == "k"] == [run_id]
    await services.locks.release(run_id)


async def test_a_flow_whose_run_was_taken_over_does_not_send_its_job(
    services: Services, api: Any, rt: Runtime, backend: Recording
) -> None:
    """The new owner sends the job: the flow of the executor that had looked dead must not
    (before, whichever came first sent it, and the other found the run mid-dispatch: in doubt)."""
    run_id = new_run(api, description="taken over before dispatch")
    assert await lifecycle.acquire(rt, run_id, log) == {}
    assert services.repo.claim_for_executor(run_id, "x1", None)
    rt.executor_id = "x0"
    assert await lifecycle.dispatch(rt, run_id, {}, log)
    assert backend.submitted == []
    assert services.repo.get_run(run_id).status == "PENDING_SUBMIT"
    rt.executor_id = "x1"
    assert await lifecycle.dispatch(rt, run_id, {}, log)
    assert backend.submitted == [run_id]
