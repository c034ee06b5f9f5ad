"""The repository's door: a run's status changes only through a step of the machine, with the
step's declared effects and its audit row in the step's own transaction."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from ascob_api.repository import Repository
from ascob_api.service import Services
from ascob_flows.machine import (
    ABORT_UNDISPATCHED,
    BEGIN_ABORT,
    BEGIN_DISPATCH,
    KEYS_REPORTED,
    READY_TO_DISPATCH,
    RECORD_SUBMISSION,
    REPORT_SUCCEEDED,
    FieldNotAllowed,
)
from ascob_flows.ports import AsyncRunRepository, AuditNote
from tests.unit.conftest import submit


def audit_actions(services: Services, run_id: int) -> list[str]:
    return [e.action for e in reversed(services.repo.search_audit(run_id=run_id))]


def test_apply_refuses_a_status_in_its_fields(services: Services, api: TestClient) -> None:
    run_id = submit(api, description="door")
    with pytest.raises(FieldNotAllowed, match="status") as refused:
        services.repo.apply(run_id, READY_TO_DISPATCH, status="SUCCEDED")
    assert "writes the status itself" in str(refused.value)
    run = services.repo.get_run(run_id)
    assert run.status == "DEFINED" and not run.dispatch_started


def test_apply_refuses_a_column_the_step_does_not_allow(
    services: Services, api: TestClient
) -> None:
    run_id = submit(api, description="door")
    for step, fields in (
        (ABORT_UNDISPATCHED, {"end_time": None}),  # an effect of the step, not the caller's
        (READY_TO_DISPATCH, {"message": "sneaked in"}),
        (ABORT_UNDISPATCHED, {"flow_run_id": "elsewhere"}),
    ):
        with pytest.raises(FieldNotAllowed, match=f"step {step.name} does not write"):
            services.repo.apply(run_id, step, **fields)
    with pytest.raises(FieldNotAllowed, match="identification_keys"):
        services.repo.apply(run_id, READY_TO_DISPATCH, keys=lambda k: {"x": "y"})
    run = services.repo.get_run(run_id)
    assert (run.status, run.message, run.flow_run_id) == ("DEFINED", None, None)
    assert run.identification_keys == {}


def test_the_async_facade_refuses_the_same(services: Services, api: TestClient) -> None:
    run_id = submit(api, description="door")
    db = AsyncRunRepository(services.repo)
    with pytest.raises(FieldNotAllowed, match="status"):
        asyncio.run(db.apply(run_id, ABORT_UNDISPATCHED, status="ABORTED"))
    assert services.repo.get_run(run_id).status == "DEFINED"


def test_a_step_writes_its_declared_effects(services: Services, api: TestClient) -> None:
    run_id = submit(api, description="effects")
    services.repo.apply(run_id, READY_TO_DISPATCH)
    services.repo.apply(run_id, BEGIN_DISPATCH)
    assert services.repo.get_run(run_id).dispatch_started
    services.repo.apply(run_id, RECORD_SUBMISSION, keys=lambda k: {**k, "dummyJobId": "j"})
    running = services.repo.get_run(run_id)
    assert running.end_time is None and not running.flow_unsettled
    assert services.repo.apply(run_id, REPORT_SUCCEEDED) is not None
    ended = services.repo.get_run(run_id)
    assert ended.status == "SUCCEDED" and ended.end_time is not None and ended.flow_unsettled


def test_the_audit_row_is_written_with_the_step(services: Services, api: TestClient) -> None:
    run_id = submit(api, description="audit")
    note = AuditNote("someone", "stop", {"force": False})
    assert services.repo.apply(run_id, ABORT_UNDISPATCHED, audit=note) is not None
    assert audit_actions(services, run_id)[-1] == "stop"
    # a step that does not apply writes no audit row, unless asked to
    assert services.repo.apply(run_id, ABORT_UNDISPATCHED, audit=note) is None
    assert audit_actions(services, run_id).count("stop") == 1
    asked = AuditNote("someone", "poke", always=True, says_applied=True)
    assert services.repo.apply(run_id, BEGIN_ABORT, audit=asked) is None
    [poke] = [e for e in services.repo.search_audit(run_id=run_id) if e.action == "poke"]
    assert poke.details == {"applied": False}


def test_a_step_that_fails_leaves_neither_status_nor_audit(
    services: Services, api: TestClient
) -> None:
    """The audit row is in the step's own transaction: both are written, or neither."""
    run_id = submit(api, description="atomic")
    before = audit_actions(services, run_id)

    def broken(stored: dict[str, str]) -> dict[str, str]:
        raise RuntimeError("the keys cannot be computed")

    with pytest.raises(RuntimeError):
        services.repo.apply(
            run_id, KEYS_REPORTED, keys=broken, audit=AuditNote("job", "webhook_keys")
        )
    assert audit_actions(services, run_id) == before
    assert services.repo.get_run(run_id).identification_keys == {}


def test_no_write_of_any_column_bypasses_the_steps() -> None:
    assert not hasattr(Repository, "update_fields")
    assert not hasattr(Repository, "register_spec")
