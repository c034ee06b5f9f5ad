"""What the flow needs from the run repository. ``ascob_api`` provides the implementation.

``ascob_flows`` must not import ``ascob_api``; the executor is handed an object that follows
:class:`RunRepository` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ascob_flows.machine import Stage, Step
from ascob_flows.status import RunStatus

KeysUpdate = Callable[[dict[str, str]], dict[str, str]]


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
    """Reads and conditional writes of runs. Every write is atomic in the repository."""

    def get_record(self, run_id: int) -> RunRecord: ...

    def apply(
        self,
        run_id: int,
        step: Step,
        *,
        keys: KeysUpdate | None = None,
        owner: str | None = None,
        **fields: Any,
    ) -> Stage | None:
        """Apply a step of :mod:`ascob_flows.machine` as one conditional write: the new stage,
        or None if the run was not in one of the step's from-stages, or (given ``owner``)
        another executor owns it (nothing changed)."""
        ...

    def update_fields(self, run_id: int, **fields: Any) -> None: ...

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

    def register_spec(self, job_spec: Mapping[str, Any], flow_run_id: str) -> int:
        """Record a run for a flow run started straight from the deployment."""
        ...

    def executor_heartbeat(self, executor_id: str, ttl: float) -> None: ...

    def live_executors(self) -> list[str]: ...

    def executor_alive_elsewhere(self, executor_id: str) -> bool: ...

    def retire_executor(self, executor_id: str) -> None: ...
