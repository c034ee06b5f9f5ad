"""The run's state machine as a table: what it allows, and what it never allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from ascob_flows.machine import (
    BEGIN_DISPATCH,
    ENDS,
    JOB_REPORTABLE,
    KEYS_REPORTED,
    RECORD_SUBMISSION,
    STEPS,
    Effect,
    Stage,
    backend_report_step,
    report_step,
    table_markdown,
)
from ascob_flows.status import RunStatus
from backends import BackendStatus

FINAL = {s for s in Stage if s.status.is_final}


def test_step_names_are_unique_and_each_step_has_a_source() -> None:
    names = [s.name for s in STEPS]
    assert len(names) == len(set(names))
    assert all(step.moves for step in STEPS)


def test_nothing_leaves_a_final_status() -> None:
    for step in STEPS:
        for source, target in step.moves.items():
            if source in FINAL:
                assert target is source, f"{step.name} moves {source} to {target}"


def test_every_status_is_reachable_from_defined() -> None:
    reached = {Stage.DEFINED}
    while True:
        more = {t for step in STEPS for s, t in step.moves.items() if s in reached} - reached
        if not more:
            break
        reached |= more
    assert {s.status for s in reached} == set(RunStatus)


def test_a_run_is_dispatched_once() -> None:
    """Only begin_dispatch enters DISPATCHING, only from PENDING_SUBMIT; nothing goes back but
    dispatch_deferred, taken only when the backend certainly did not take the job."""
    into = [s for s in STEPS for src, t in s.moves.items() if t is Stage.DISPATCHING and src != t]
    assert into == [BEGIN_DISPATCH]
    assert BEGIN_DISPATCH.from_stages == {Stage.PENDING_SUBMIT}
    after = {Stage.DISPATCHING, Stage.SUBMITTED, Stage.RUNNING, Stage.ABORTING, *FINAL}
    back = []
    for step in STEPS:
        for source, target in step.moves.items():
            if source in after and target not in after:
                back.append((step.name, source, target))
    assert back == [("dispatch_deferred", Stage.DISPATCHING, Stage.PENDING_SUBMIT)]


def test_the_submission_is_recorded_with_its_status_in_one_step() -> None:
    assert RECORD_SUBMISSION.target(Stage.DISPATCHING) is Stage.SUBMITTED
    assert RECORD_SUBMISSION.target(Stage.PENDING_SUBMIT) is None  # not dispatched: refused


def test_a_job_reports_only_running_or_how_it_ended() -> None:
    assert set(JOB_REPORTABLE) == {
        RunStatus.RUNNING,
        RunStatus.SUCCEDED,
        RunStatus.FAILED,
        RunStatus.ABORTED,
    }
    for status in set(RunStatus) - set(JOB_REPORTABLE):
        with pytest.raises(ValueError, match="RUNNING, SUCCEDED, FAILED, ABORTED"):
            report_step(status)


@pytest.mark.parametrize("status", list(JOB_REPORTABLE))
def test_reports_never_apply_before_dispatch(status: RunStatus) -> None:
    step = report_step(status)
    for stage in (Stage.DEFINED, Stage.WAITING_LOCKS, Stage.PENDING_SUBMIT):
        assert step.target(stage) is None


def test_running_after_an_end_or_during_a_stop_changes_nothing() -> None:
    step = report_step(RunStatus.RUNNING)
    for stage in (*FINAL, Stage.ABORTING, Stage.RUNNING):
        assert step.target(stage) is None


def test_backend_reports() -> None:
    assert backend_report_step(BackendStatus.QUEUED) is None
    step = backend_report_step(BackendStatus.SUCCEEDED)
    assert step is not None and step.target(Stage.ABORTING) is Stage.SUCCEDED
    assert step.target(Stage.SUBMITTED) is Stage.SUCCEDED


def test_keys_reported_change_no_status() -> None:
    assert all(src is t for src, t in KEYS_REPORTED.moves.items())
    assert not (KEYS_REPORTED.from_stages & FINAL)


def test_stage_of_pending_submit() -> None:
    assert Stage.of(RunStatus.PENDING_SUBMIT, True) is Stage.DISPATCHING
    assert Stage.of(RunStatus.PENDING_SUBMIT, False) is Stage.PENDING_SUBMIT
    assert Stage.DISPATCHING.status is RunStatus.PENDING_SUBMIT


def test_status_parsing() -> None:
    assert RunStatus.parse(" succeeded ") is RunStatus.SUCCEDED
    assert RunStatus.parse("Running") is RunStatus.RUNNING
    with pytest.raises(ValueError, match="expected one of"):
        RunStatus.parse("DONE")


def test_the_table_lists_every_step_and_the_docs_show_it() -> None:
    table = table_markdown()
    for step in STEPS:
        assert f"`{step.name}`" in table
    docs = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
    assert table in docs.read_text(), "docs/architecture.md: paste machine.table_markdown()"


def test_each_step_declares_the_effects_its_moves_need() -> None:
    """What a step writes besides the status is declared beside it; the repository applies
    only what is declared, so a step that ends a run must say so (end time, flow run owed,
    callback owed), and one that enters or leaves DISPATCHING must keep dispatch_started."""
    for step in STEPS:
        moves = [(s, t) for s, t in step.moves.items() if s is not t]
        ends = any(t in FINAL and s not in FINAL for s, t in moves)
        flags = any(t in (Stage.PENDING_SUBMIT, Stage.DISPATCHING) for _, t in moves)
        assert (ENDS <= step.effects) is ends, step.name
        assert not (step.effects & ENDS) or ends, step.name
        assert (Effect.DISPATCH_FLAG in step.effects) is flags, step.name
        assert "status" not in step.fields, step.name
        for source in step.moves:
            move = step.move(source)
            assert move is not None and move.target is step.moves[source]
            assert move.owes_callback is (move.target in FINAL and source not in FINAL)
