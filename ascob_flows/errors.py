"""The engine's domain errors. ``ascob_api.errors`` maps each to one HTTP status, in one place.

::

    RunError
    ├── RunNotFound        no such run (or webhook)
    ├── InvalidSpec        the JobSpec cannot run (bad labels, locks, variables, limits)
    └── WrongState         the operation does not apply to the run as it is now
        ├── AlreadyFinal   the run has ended
        └── NotDispatched  a job reported on a run ASCOB has not dispatched

Lock-store outages are :class:`ascob_flows.locks.LockStoreUnavailable`.
"""

from __future__ import annotations

from ascob_flows.status import RunStatus


class RunError(Exception):
    """Base of the engine's domain errors; ``message`` is what the caller is told."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RunNotFound(RunError):
    pass


class InvalidSpec(RunError):
    pass


class WrongState(RunError):
    def __init__(self, message: str, status: RunStatus | None = None) -> None:
        super().__init__(message)
        self.status = status


class AlreadyFinal(WrongState):
    def __init__(self, run_id: int, status: RunStatus) -> None:
        super().__init__(f"run {run_id} is already {status.value}", status)


class NotDispatched(WrongState):
    pass
