"""What the flow needs from the run repository. ``ascob_api`` provides the implementation.

``ascob_flows`` must not import ``ascob_api``; the executor is handed an object that follows
:class:`RunRepository` instead. Async code reaches it through :class:`AsyncRunRepository`, which
runs each call in a worker thread (every call is one short transaction).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ascob_flows.machine import Stage, Step
from ascob_flows.status import RunStatus

KeysUpdate = Callable[[dict[str, str]], dict[str, str]]


@dataclass(frozen=True)
class AuditNote:
    """An audit row that a step writes in its own transaction (never a secret in ``details``).

    Written only if the step moves the run, unless ``always`` (then also if it does not, except,
    with ``unless_ended``, when the run has ended); with ``says_applied``, its details also say
    whether it did (``applied``)."""

    actor: str
    action: str
    details: Mapping[str, Any] = field(default_factory=dict)
    always: bool = False
    unless_ended: bool = False
    says_applied: bool = False

    def written(self, moved: bool, ended: bool) -> bool:
        """Whether the row is written, given whether the step moved the run and whether the
        run had ended before it."""
        return moved or (self.always and not (self.unless_ended and ended))


@dataclass(frozen=True)
class RunRecord:
    """The parts of a run the engine works with."""

    id: int
    status: RunStatus
    description: str | None
    submitter: str | None
    backend_id: str
    labels: Mapping[str, str]
    parameters: Mapping[str, str]
    lock_keys: tuple[str, ...]
    webhook_id: str
    identification_keys: Mapping[str, str] = field(default_factory=dict)
    flow_run_id: str | None = None
    executor_id: str | None = None
    dispatch_started: bool = False
    abort_force: bool = False
    stop_sent: bool = False
    defined_time: datetime | None = None
    max_lock_wait: int | None = None
    waiting_since: datetime | None = None
    message: str | None = None

    @property
    def stage(self) -> Stage:
        return Stage.of(self.status, self.dispatch_started)


class RunRepository(Protocol):
    """Reads and conditional writes of runs. Every write is atomic in the repository.

    A status changes only through :meth:`apply`; the other writes are named, one column each."""

    def get_record(self, run_id: int) -> RunRecord: ...

    def apply(
        self,
        run_id: int,
        step: Step,
        *,
        keys: KeysUpdate | None = None,
        owner: str | None = None,
        audit: AuditNote | None = None,
        **fields: Any,
    ) -> Stage | None:
        """Apply a step of :mod:`ascob_flows.machine` as one conditional write, with the step's
        effects and ``audit`` in the same transaction: the new stage, or None if the run was not
        in one of the step's from-stages, or (given ``owner``) another executor owns it (nothing
        changed). ``fields`` the step does not allow (``status`` first of all) raise
        :class:`ascob_flows.machine.FieldNotAllowed` before anything is written."""
        ...

    def note(self, run_id: int, message: str) -> None:
        """Set the run's message (what the user is told of it), its status unchanged."""
        ...

    def record_backend_url(self, run_id: int, url: str) -> None: ...

    def mark_stop_sent(self, run_id: int) -> None: ...

    def record_executor(self, run_id: int, executor_id: str | None) -> None: ...

    def settle_flow(self, run_id: int) -> None:
        """The run's flow run shows its final state: clear ``flow_unsettled``."""
        ...

    def audit(
        self,
        actor: str,
        action: str,
        run_id: int | None = None,
        target: str | None = None,
        **details: Any,
    ) -> None:
        """Record who did what to a run (never a secret)."""
        ...

    def runs_to_launch(self, limit: int, older_than: float = 0.0) -> list[int]:
        """Runs that should have a flow run but have none yet (recorded at least
        ``older_than`` seconds ago)."""
        ...

    def set_flow_run(self, run_id: int, flow_run_id: str) -> None: ...

    def claim_for_executor(self, run_id: int, executor_id: str, expected: str | None) -> bool: ...

    def taken_over(self, executor_id: str, run_ids: Iterable[int]) -> list[int]:
        """Which of these runs another executor owns now (it took them over)."""
        ...

    def orphaned_runs(self, executor_id: str, alive: Iterable[str], limit: int) -> list[int]:
        """Non-final runs with a flow run, owned by an executor that is not alive (or by us)."""
        ...

    def unsettled_runs(self, executor_id: str, alive: Iterable[str], limit: int) -> list[int]:
        """Ended runs whose flow run's final state may be unwritten, owned by an executor that
        is not alive (or by us)."""
        ...

    def statuses(self, run_ids: Iterable[int]) -> dict[int, RunStatus]: ...

    def run_for_flow_run(self, flow_run_id: str) -> int | None: ...

    def executor_heartbeat(self, executor_id: str, ttl: float) -> None: ...

    def live_executors(self) -> list[str]: ...

    def executor_alive_elsewhere(self, executor_id: str) -> bool: ...

    def retire_executor(self, executor_id: str) -> None: ...


class AsyncRunRepository:
    """The one async facade over a :class:`RunRepository`: each call in a worker thread."""

    def __init__(self, sync: RunRepository) -> None:
        self.sync = sync

    async def get_record(self, run_id: int) -> RunRecord:
        return await asyncio.to_thread(self.sync.get_record, run_id)

    async def apply(
        self,
        run_id: int,
        step: Step,
        *,
        keys: KeysUpdate | None = None,
        owner: str | None = None,
        audit: AuditNote | None = None,
        **fields: Any,
    ) -> Stage | None:
        step.check(fields, keys=keys is not None)  # refused here, before a thread is taken
        return await asyncio.to_thread(
            lambda: self.sync.apply(run_id, step, keys=keys, owner=owner, audit=audit, **fields)
        )

    async def note(self, run_id: int, message: str) -> None:
        await asyncio.to_thread(self.sync.note, run_id, message)

    async def record_backend_url(self, run_id: int, url: str) -> None:
        await asyncio.to_thread(self.sync.record_backend_url, run_id, url)

    async def mark_stop_sent(self, run_id: int) -> None:
        await asyncio.to_thread(self.sync.mark_stop_sent, run_id)

    async def record_executor(self, run_id: int, executor_id: str | None) -> None:
        await asyncio.to_thread(self.sync.record_executor, run_id, executor_id)

    async def settle_flow(self, run_id: int) -> None:
        await asyncio.to_thread(self.sync.settle_flow, run_id)

    async def audit(
        self,
        actor: str,
        action: str,
        run_id: int | None = None,
        target: str | None = None,
        **details: Any,
    ) -> None:
        await asyncio.to_thread(lambda: self.sync.audit(actor, action, run_id, target, **details))

    async def runs_to_launch(self, limit: int, older_than: float = 0.0) -> list[int]:
        return await asyncio.to_thread(self.sync.runs_to_launch, limit, older_than)

    async def set_flow_run(self, run_id: int, flow_run_id: str) -> None:
        await asyncio.to_thread(self.sync.set_flow_run, run_id, flow_run_id)

    async def claim_for_executor(self, run_id: int, executor_id: str, expected: str | None) -> bool:
        return await asyncio.to_thread(self.sync.claim_for_executor, run_id, executor_id, expected)

    async def taken_over(self, executor_id: str, run_ids: Iterable[int]) -> list[int]:
        return await asyncio.to_thread(self.sync.taken_over, executor_id, list(run_ids))

    async def orphaned_runs(self, executor_id: str, alive: Iterable[str], limit: int) -> list[int]:
        return await asyncio.to_thread(self.sync.orphaned_runs, executor_id, list(alive), limit)

    async def unsettled_runs(self, executor_id: str, alive: Iterable[str], limit: int) -> list[int]:
        return await asyncio.to_thread(self.sync.unsettled_runs, executor_id, list(alive), limit)

    async def statuses(self, run_ids: Iterable[int]) -> dict[int, RunStatus]:
        return await asyncio.to_thread(self.sync.statuses, list(run_ids))

    async def run_for_flow_run(self, flow_run_id: str) -> int | None:
        return await asyncio.to_thread(self.sync.run_for_flow_run, flow_run_id)

    async def executor_heartbeat(self, executor_id: str, ttl: float) -> None:
        await asyncio.to_thread(self.sync.executor_heartbeat, executor_id, ttl)

    async def live_executors(self) -> list[str]:
        return await asyncio.to_thread(self.sync.live_executors)

    async def executor_alive_elsewhere(self, executor_id: str) -> bool:
        return await asyncio.to_thread(self.sync.executor_alive_elsewhere, executor_id)

    async def retire_executor(self, executor_id: str) -> None:
        await asyncio.to_thread(self.sync.retire_executor, executor_id)
