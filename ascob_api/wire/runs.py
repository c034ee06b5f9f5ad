"""What the API tells of runs: RunInfo, search, dry runs, webhook reports, events, callbacks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import (
    ConfigDict,
    field_serializer,
    field_validator,
)
from pydantic import Field as PField

from ascob_api.wire.base import InputModel, WireModel
from ascob_flows.clock import wire_time
from ascob_flows.status import RunStatus


def _waiting_for_is_optional(schema: dict[str, Any]) -> None:
    required = schema.get("required")
    if isinstance(required, list) and "waitingFor" in required:
        required.remove("waitingFor")


class RunInfo(WireModel):
    # the document says what the server sends: every original field, always (null included);
    # ``waitingFor`` only while the run waits for locks
    model_config = ConfigDict(
        extra="ignore",
        populate_by_name=True,
        json_schema_serialization_defaults_required=True,
        json_schema_extra=_waiting_for_is_optional,
    )

    id: int
    parent_id: int | None = PField(default=None, serialization_alias="parentId")
    status: RunStatus
    description: str | None = None
    submitter: str | None = None
    defined_time: datetime | None = PField(default=None, serialization_alias="definedTime")
    submission_time: datetime | None = PField(default=None, serialization_alias="submissionTime")
    end_time: datetime | None = PField(default=None, serialization_alias="endTime")
    waiting_for: list[int] | None = PField(
        default=None,
        serialization_alias="waitingFor",
        # the original ASCOB fields are always there (null included); extras only when set.
        # A field-level rule, not a wrap model serializer: that one's return type (a dict)
        # would replace the typed model in the document's serialization schema
        exclude_if=lambda value: value is None,
        description="WAITING_LOCKS only: the runs this run waits for (holders of its locks, "
        "and earlier waiters its locks are reserved for). Absent otherwise.",
    )
    message: str | None = PField(
        default=None,
        description="Why the run failed, was aborted or is IN_DOUBT, or what happened to it "
        "(re-attached after a restart, locks taken while it was not followed).",
    )
    backend_id: str | None = PField(
        default=None, serialization_alias="backendId", description="The backend that runs it."
    )
    backend_url: str | None = PField(
        default=None,
        serialization_alias="backendUrl",
        description="The job's page on the backend, once the backend has told it.",
    )
    labels: dict[str, str] = PField(default_factory=dict, description="As run (after variables).")
    parameters: dict[str, str] = PField(
        default_factory=dict, description="As run (after runtime variables)."
    )
    locks: list[str] = PField(default_factory=list, description="The lock keys it needs.")
    manual_start: bool = PField(default=False, serialization_alias="manualStart")

    @field_serializer("defined_time", "submission_time", "end_time")
    def _wire_time(self, value: datetime | None) -> str | None:
        return wire_time(value)

    @classmethod
    def of(cls, run: Any) -> RunInfo:
        """From a run of the repository (``ascob_api.models.Run``)."""
        assert run.id is not None
        return cls(
            id=run.id,
            parent_id=run.parent_id,
            status=RunStatus(run.status),
            description=run.description,
            submitter=run.submitter,
            defined_time=run.defined_time,
            submission_time=run.submission_time,
            end_time=run.end_time,
            message=run.message,
            backend_id=run.backend_id or None,
            backend_url=run.backend_url,
            labels=dict(run.effective_spec.get("labels") or {}),
            parameters=dict(run.effective_spec.get("parameters") or {}),
            locks=list(run.lock_keys),
            manual_start=run.manual_start,
        )


class DryRunLock(WireModel):
    key: str
    holder_run_id: int | None = PField(default=None, serialization_alias="holderRunId")
    waiting_run_ids: list[int] = PField(default_factory=list, serialization_alias="waitingRunIds")


class DryRunResult(WireModel):
    """What ``POST /api/runs`` would do with this spec, nothing created."""

    valid: bool = True
    backend_id: str = PField(serialization_alias="backendId")
    labels: dict[str, str]
    parameters: dict[str, str]
    locks: list[DryRunLock]
    would_wait: bool = PField(
        serialization_alias="wouldWait",
        description="A lock it needs is held or waited for now: the run would wait.",
    )
    checks: list[str] = PField(description="What the backend verified, for a person.")


class SearchRunRequest(InputModel):
    submitter_filter: str | None = PField(default=None, alias="submitterFilter")
    status_filter: list[RunStatus] | None = PField(default=None, alias="statusFilter")
    created_after_filter: datetime | None = PField(default=None, alias="createdAfterFilter")
    created_before_filter: datetime | None = PField(default=None, alias="createdBeforeFilter")
    max_results: int | None = PField(default=None, alias="maxResults", ge=0, strict=True)

    @field_validator("created_after_filter", "created_before_filter", mode="before")
    @classmethod
    def _a_time_string(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError("expected a date-time string such as 2026-11-30T12:00:00 (UTC)")
        return value

    @field_validator("created_after_filter", "created_before_filter", mode="after")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # times without an offset are UTC, as ASCOB writes them
        if value is not None and value.utcoffset() is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("status_filter", mode="before")
    @classmethod
    def _parse_statuses(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [RunStatus.parse(v) if isinstance(v, str) else v for v in value]
        return value


class SearchRunResponse(WireModel):
    items: list[RunInfo]


class WebhookUpdate(InputModel):
    status: RunStatus | None = None
    identification_keys: dict[str, str] | None = PField(default=None, alias="identificationKeys")

    @field_validator("status", mode="before")
    @classmethod
    def _parse_status(cls, value: Any) -> Any:
        return RunStatus.parse(value) if isinstance(value, str) else value


class EventsTicket(WireModel):
    ticket: str
    expires_in: int = PField(serialization_alias="expiresIn", description="seconds")


class CallbackAttemptView(WireModel):
    at: datetime = PField(description="When the receiver's answer, or the error, came.")
    status: int | None = PField(
        default=None, description="The HTTP status the receiver answered; null if none came."
    )
    error: str | None = PField(
        default=None, description="Why the attempt failed (a non-2xx status, a network error)."
    )

    @field_serializer("at")
    def _wire_time(self, value: datetime) -> str | None:
        return wire_time(value)


class CallbackView(WireModel):
    url: str
    state: str = PField(description="pending, delivered or failed (given up)")
    attempts: int
    last_attempt_at: datetime | None = PField(default=None, serialization_alias="lastAttemptAt")
    last_status: int | None = PField(default=None, serialization_alias="lastStatus")
    last_error: str | None = PField(default=None, serialization_alias="lastError")
    next_attempt_at: datetime | None = PField(default=None, serialization_alias="nextAttemptAt")
    delivered_at: datetime | None = PField(default=None, serialization_alias="deliveredAt")
    attempt_log: list[CallbackAttemptView] = PField(
        default_factory=list,
        serialization_alias="attemptLog",
        description="Every attempt, oldest first: when, the HTTP status or the error.",
    )

    @field_serializer("last_attempt_at", "next_attempt_at", "delivered_at")
    def _wire_time(self, value: datetime | None) -> str | None:
        return wire_time(value)


class CallbackList(WireModel):
    items: list[CallbackView]


class FileUploaded(WireModel):
    run_id: int = PField(serialization_alias="runId")
    file_id: str = PField(serialization_alias="fileId")
    size: int
