"""The run's life: every status change of an ASCOB run is one of the named steps below.

The flow, a stop, a job's webhook report and a refresh all go through :data:`STEPS`; each step is
applied by the repository as one conditional write (``RunRepository.apply``): it happens only if
the run is in one of the step's from-stages, else nothing changes and the caller is told so.

Each step also declares, beside its moves, what it writes besides the status: its
:class:`Effect` s (end time, ``flow_unsettled``, ``dispatch_started``, the callback outbox, the
identification keys), applied by the repository as declared, and the few ``fields`` its caller
may give (``message``, ...). The repository refuses any other field, ``status`` first of all
(:class:`FieldNotAllowed`): the status is the step's to write.

A *stage* is the run's status, with ``PENDING_SUBMIT`` split in two: ``PENDING_SUBMIT`` (locks
held, the backend not called yet) and ``DISPATCHING`` (the backend is being called: its outcome is
not known yet). On the wire both are ``PENDING_SUBMIT``.

::

    DEFINED ─► WAITING_LOCKS ─► PENDING_SUBMIT ─► DISPATCHING ─► SUBMITTED ─► RUNNING ─► final
       │             │                │               │  └─► IN_DOUBT / FAILED (refused)
       └─────────────┴──── stop ──────┘─► ABORTED     └──── stop ───► ABORTING ─► final

The table in docs/architecture.md is generated from the same data (:func:`table_markdown`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from ascob_flows.status import RunStatus
from backends import BackendStatus


class Stage(StrEnum):
    """A run's status, with PENDING_SUBMIT split by whether the backend is being called."""

    DEFINED = "DEFINED"
    WAITING_LOCKS = "WAITING_LOCKS"
    PENDING_SUBMIT = "PENDING_SUBMIT"
    DISPATCHING = "DISPATCHING"
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    ABORTING = "ABORTING"
    IN_DOUBT = "IN_DOUBT"
    SUCCEDED = "SUCCEDED"
    FAILED = "FAILED"
    ABORTED = "ABORTED"

    @property
    def status(self) -> RunStatus:
        """The wire status of this stage."""
        if self is Stage.DISPATCHING:
            return RunStatus.PENDING_SUBMIT
        return RunStatus(self.value)

    @classmethod
    def of(cls, status: RunStatus, dispatch_started: bool) -> Stage:
        if status is RunStatus.PENDING_SUBMIT and dispatch_started:
            return cls.DISPATCHING
        return cls(status.value)


_NOT_DISPATCHED = (Stage.DEFINED, Stage.WAITING_LOCKS, Stage.PENDING_SUBMIT)
_WITH_BACKEND = (Stage.DISPATCHING, Stage.SUBMITTED, Stage.RUNNING, Stage.ABORTING)


class Effect(StrEnum):
    """What a step writes besides the status; the repository applies each one as declared here,
    in the step's own transaction, and writes nothing a step does not declare."""

    DISPATCH_FLAG = "dispatch_started"
    """on a move into PENDING_SUBMIT or DISPATCHING: ``dispatch_started`` says which of the two"""
    END_TIME = "end_time"
    """on a move into a final stage: the end time, unless the run has one"""
    FLOW_UNSETTLED = "flow_unsettled"
    """on a move that ends the run: its flow run's final state is owed (``flow_unsettled``)"""
    CALLBACK = "callback_deliveries"
    """on a move that ends the run: a delivery in the callback outbox, if the spec has a URL"""
    KEYS = "identification_keys"
    """the identification keys, computed by the caller's ``keys`` from the stored ones"""


ENDS = frozenset({Effect.END_TIME, Effect.FLOW_UNSETTLED, Effect.CALLBACK})
"""The effects of a step that can end a run."""


class FieldNotAllowed(ValueError):
    """A caller asked a step to write what the step does not allow (the status, above all)."""

    def __init__(self, step: Step, refused: Iterable[str]) -> None:
        self.step, self.refused = step, sorted(refused)
        allowed = ", ".join(sorted(step.fields)) or "no field"
        why = " (a step writes the status itself)" if "status" in self.refused else ""
        super().__init__(
            f"step {step.name} does not write {', '.join(self.refused)}{why}; it allows {allowed}"
        )


@dataclass(frozen=True)
class Move:
    """One move of a step, with what it writes besides the status (see :class:`Effect`)."""

    target: Stage
    dispatch_started: bool | None  # the value to write, or None: left as it is
    stamps_end: bool  # the end time, unless the run has one
    unsettles_flow: bool  # flow_unsettled set
    owes_callback: bool  # a delivery in the callback outbox (if the spec has a callbackUrl)


@dataclass(frozen=True)
class Step:
    """A named status change: from each stage in ``moves`` to the stage it maps to. ``effects``
    is what it writes besides the status; ``fields`` what its caller may write with it."""

    name: str
    moves: Mapping[Stage, Stage]
    doc: str
    effects: frozenset[Effect] = field(default=frozenset())
    fields: frozenset[str] = field(default=frozenset())

    @property
    def from_stages(self) -> frozenset[Stage]:
        return frozenset(self.moves)

    def target(self, stage: Stage) -> Stage | None:
        return self.moves.get(stage)

    def check(self, fields: Iterable[str], *, keys: bool = False) -> None:
        """Refuse (:class:`FieldNotAllowed`) what this step does not write."""
        refused = set(fields) - self.fields
        if keys and Effect.KEYS not in self.effects:
            refused.add(Effect.KEYS.value)
        if refused:
            raise FieldNotAllowed(self, refused)

    def move(self, stage: Stage) -> Move | None:
        """The move from ``stage`` and its writes, or None: the step does not apply there."""
        target = self.moves.get(stage)
        if target is None:
            return None
        flag = None
        if Effect.DISPATCH_FLAG in self.effects and target in (
            Stage.PENDING_SUBMIT,
            Stage.DISPATCHING,
        ):
            flag = target is Stage.DISPATCHING
        final = target.status.is_final
        ends = final and not stage.status.is_final
        return Move(
            target,
            dispatch_started=flag,
            stamps_end=final and Effect.END_TIME in self.effects,
            unsettles_flow=ends and Effect.FLOW_UNSETTLED in self.effects,
            owes_callback=ends and Effect.CALLBACK in self.effects,
        )

    def writes(self) -> str:
        """What the step writes besides the status, for the docs' table."""
        effects = [e.value for e in Effect if e in self.effects]
        given = [f"{f} (given)" for f in sorted(self.fields)]
        return ", ".join(effects + given) or "nothing"


def _to(target: Stage, *sources: Stage) -> dict[Stage, Stage]:
    return dict.fromkeys(sources, target)


def _step(
    name: str,
    moves: Mapping[Stage, Stage],
    doc: str,
    effects: Iterable[Effect] = (),
    fields: Iterable[str] = (),
) -> Step:
    return Step(name, dict(moves), doc, frozenset(effects), frozenset(fields))


_MESSAGE = ("message",)
_FLAG = (Effect.DISPATCH_FLAG,)


WAIT_FOR_LOCKS = _step(
    "wait_for_locks",
    _to(Stage.WAITING_LOCKS, Stage.DEFINED),
    "the run names locks",
    fields=("waiting_since",),
)
READY_TO_DISPATCH = _step(
    "ready_to_dispatch",
    _to(Stage.PENDING_SUBMIT, Stage.DEFINED, Stage.WAITING_LOCKS),
    "it holds its locks",
    _FLAG,
)
LOCKS_LOST = _step(
    "locks_lost",
    _to(Stage.WAITING_LOCKS, Stage.PENDING_SUBMIT),
    "its lock lease ran out before the backend was called: wait again",
)
BEGIN_DISPATCH = _step(
    "begin_dispatch",
    _to(Stage.DISPATCHING, Stage.PENDING_SUBMIT),
    "the backend is about to be called",
    _FLAG,
)
RECORD_SUBMISSION = _step(
    "record_submission",
    {
        Stage.DISPATCHING: Stage.SUBMITTED,
        **{
            s: s
            for s in (Stage.RUNNING, Stage.ABORTING, Stage.SUCCEDED, Stage.FAILED, Stage.ABORTED)
        },
    },
    "the backend took the job: identification keys and submission time stored with the status "
    "in one write (a run the job reported on, or stopped, meanwhile keeps its status)",
    (Effect.KEYS,),
    ("submission_time", "message"),
)
REATTACH = _step(
    "reattach",
    _to(Stage.SUBMITTED, Stage.DISPATCHING),
    "resumed after the executor stopped mid-dispatch, and the job's identification keys "
    "(reported by the job) find it on the backend",
    fields=_MESSAGE,
)
DISPATCH_REFUSED = _step(
    "dispatch_refused",
    _to(Stage.FAILED, Stage.DISPATCHING, Stage.ABORTING),
    "the backend certainly did not start the job",
    ENDS,
    _MESSAGE,
)
DISPATCH_DEFERRED = _step(
    "dispatch_deferred",
    {Stage.DISPATCHING: Stage.PENDING_SUBMIT, Stage.ABORTING: Stage.ABORTED},
    "the backend is unavailable and certainly did not start the job: sent again later (a run "
    "stopped meanwhile ends ABORTED)",
    {*_FLAG, *ENDS},
    _MESSAGE,
)
DISPATCH_UNKNOWN = _step(
    "dispatch_unknown",
    _to(Stage.IN_DOUBT, Stage.DISPATCHING, Stage.ABORTING),
    "the backend may or may not have the job (failed call, executor died mid-dispatch): never "
    "sent again",
    ENDS,
    _MESSAGE,
)
REPORT_RUNNING = _step(
    "report_running",
    _to(Stage.RUNNING, Stage.DISPATCHING, Stage.SUBMITTED),
    "the job runs",
    fields=_MESSAGE,
)
REPORT_SUCCEEDED = _step(
    "report_succeeded",
    _to(Stage.SUCCEDED, *_WITH_BACKEND),
    "the backend or the job says it ended",
    ENDS,
    _MESSAGE,
)
REPORT_FAILED = _step(
    "report_failed",
    _to(Stage.FAILED, *_WITH_BACKEND),
    "the backend or the job says it failed",
    ENDS,
    _MESSAGE,
)
REPORT_ABORTED = _step(
    "report_aborted",
    _to(Stage.ABORTED, *_WITH_BACKEND),
    "the backend or the job says it was stopped",
    ENDS,
    _MESSAGE,
)
JOB_LOST = _step(
    "job_lost",
    _to(Stage.FAILED, Stage.SUBMITTED, Stage.RUNNING, Stage.ABORTING),
    "the backend no longer knows the job",
    ENDS,
    _MESSAGE,
)
ABORT_UNDISPATCHED = _step(
    "abort_undispatched",
    _to(Stage.ABORTED, *_NOT_DISPATCHED),
    "stopped before the backend was called: ABORTED at once",
    ENDS,
    _MESSAGE,
)
BEGIN_ABORT = _step(
    "begin_abort",
    _to(Stage.ABORTING, Stage.DISPATCHING, Stage.SUBMITTED, Stage.RUNNING),
    "stopped while the backend has (or may have) the job: the backend is asked to stop it",
    fields=("abort_force",),
)
LOCK_WAIT_EXPIRED = _step(
    "lock_wait_expired",
    _to(Stage.ABORTED, Stage.DEFINED, Stage.WAITING_LOCKS),
    "it waited longer than the spec's maxLockWaitSeconds",
    ENDS,
    _MESSAGE,
)

REPORT_QUEUED = _step(
    "report_queued",
    {Stage.SUBMITTED: Stage.SUBMITTED},
    "the backend holds the job in its queue: why (its message) is recorded, the status stays",
    fields=_MESSAGE,
)
KEYS_REPORTED = _step(
    "keys_reported",
    {s: s for s in (*_NOT_DISPATCHED, *_WITH_BACKEND)},
    "the job sent identification keys (no status change; before dispatch they are kept for it)",
    (Effect.KEYS,),
)

STEPS: tuple[Step, ...] = (
    WAIT_FOR_LOCKS,
    READY_TO_DISPATCH,
    LOCKS_LOST,
    BEGIN_DISPATCH,
    RECORD_SUBMISSION,
    REATTACH,
    DISPATCH_REFUSED,
    DISPATCH_DEFERRED,
    DISPATCH_UNKNOWN,
    REPORT_RUNNING,
    REPORT_SUCCEEDED,
    REPORT_FAILED,
    REPORT_ABORTED,
    JOB_LOST,
    ABORT_UNDISPATCHED,
    BEGIN_ABORT,
    LOCK_WAIT_EXPIRED,
    REPORT_QUEUED,
    KEYS_REPORTED,
)

_REPORTS: dict[RunStatus, Step] = {
    RunStatus.RUNNING: REPORT_RUNNING,
    RunStatus.SUCCEDED: REPORT_SUCCEEDED,
    RunStatus.FAILED: REPORT_FAILED,
    RunStatus.ABORTED: REPORT_ABORTED,
}

JOB_REPORTABLE: tuple[RunStatus, ...] = tuple(_REPORTS)
"""What a job may report through its webhook: RUNNING or how it ended."""


def report_step(status: RunStatus) -> Step:
    """The step that applies a report of ``status`` (by the backend or the job itself)."""
    try:
        return _REPORTS[status]
    except KeyError:
        allowed = ", ".join(s.value for s in JOB_REPORTABLE)
        raise ValueError(
            f"a job cannot report the status {status.value}; it may report {allowed} "
            "(SUCCEEDED is accepted too)"
        ) from None


def backend_report_step(status: BackendStatus) -> Step | None:
    """The step for what a backend says of its job; None: nothing to change (still queued)."""
    if status is BackendStatus.QUEUED:
        return None
    return report_step(RunStatus.from_backend(status))


def table_markdown() -> str:
    """The machine as a markdown table (docs/architecture.md)."""
    lines = ["| step | from | to | when | writes besides the status |", "|---|---|---|---|---|"]
    for step in STEPS:
        targets = sorted({t.value for t in step.moves.values()})
        sources = ", ".join(s.value for s in step.moves)
        lines.append(
            f"| `{step.name}` | {sources} | {' / '.join(targets)} | {step.doc} | {step.writes()} |"
        )
    return "\n".join(lines)
