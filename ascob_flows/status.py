"""Run statuses, with the wire names of the original ASCOB (typo included). Which status may
follow which is :mod:`ascob_flows.machine`."""

from __future__ import annotations

from enum import StrEnum

from backends import BackendStatus


class RunStatus(StrEnum):
    DEFINED = "DEFINED"
    WAITING_LOCKS = "WAITING_LOCKS"
    PENDING_SUBMIT = "PENDING_SUBMIT"
    SUBMITTED = "SUBMITTED"
    IN_DOUBT = "IN_DOUBT"
    RUNNING = "RUNNING"
    SUCCEDED = "SUCCEDED"
    FAILED = "FAILED"
    ABORTING = "ABORTING"
    ABORTED = "ABORTED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES

    @classmethod
    def parse(cls, value: str) -> RunStatus:
        """Accept the wire names, and SUCCEEDED spelled right; case-insensitive."""
        name = value.strip().upper()
        if name == "SUCCEEDED":
            name = "SUCCEDED"
        try:
            return cls(name)
        except ValueError:
            raise ValueError(
                f"unknown status {value!r}; expected one of {', '.join(s.value for s in cls)}"
            ) from None

    @classmethod
    def from_backend(cls, status: BackendStatus) -> RunStatus:
        return {
            BackendStatus.QUEUED: cls.SUBMITTED,
            BackendStatus.RUNNING: cls.RUNNING,
            BackendStatus.SUCCEEDED: cls.SUCCEDED,
            BackendStatus.FAILED: cls.FAILED,
            BackendStatus.ABORTED: cls.ABORTED,
        }[status]


FINAL_STATUSES = frozenset(
    {RunStatus.IN_DOUBT, RunStatus.SUCCEDED, RunStatus.FAILED, RunStatus.ABORTED}
)
