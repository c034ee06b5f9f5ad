"""SQLModel tables (never returned by the API) and the public wire models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic import Field as PField
from sqlalchemy import JSON, Column, LargeBinary
from sqlmodel import Field, SQLModel

from ascob_flows.clock import utcnow, wire_time
from ascob_flows.status import RunStatus

# --------------------------------------------------------------------------- tables


class Run(SQLModel, table=True):
    __tablename__ = "runs"

    id: int | None = Field(default=None, primary_key=True)
    parent_id: int | None = Field(default=None, index=True)
    status: str = Field(default=RunStatus.DEFINED.value, index=True)
    description: str | None = None
    submitter: str | None = Field(default=None, index=True)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    effective_spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    backend_id: str
    lock_keys: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    manual_start: bool = False
    launch_requested: bool = Field(default=False, index=True)
    defined_time: datetime = Field(default_factory=utcnow, index=True)
    submission_time: datetime | None = None
    end_time: datetime | None = None
    webhook_id: str = Field(unique=True, index=True)
    identification_keys: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    flow_run_id: str | None = Field(default=None, index=True)
    executor_id: str | None = Field(default=None, index=True)
    dispatch_started: bool = False
    abort_force: bool = False
    stop_sent: bool = False
    message: str | None = None
    waiting_since: datetime | None = None
    backend_url: str | None = None


class IdempotencyKey(SQLModel, table=True):
    """A portal's ``Idempotency-Key`` of a submission, per token: the run it created."""

    __tablename__ = "idempotency_keys"

    owner: str = Field(primary_key=True)  # the token's identity
    key: str = Field(primary_key=True)
    request_hash: str
    run_id: int
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)


class RunFile(SQLModel, table=True):
    __tablename__ = "run_files"

    run_id: int = Field(primary_key=True)
    file_id: str = Field(primary_key=True)
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    size: int
    created_at: datetime = Field(default_factory=utcnow)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"

    identifier: str = Field(primary_key=True)
    secret_hash: str = Field(unique=True, index=True)
    permissions: list[str] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None


class Executor(SQLModel, table=True):
    __tablename__ = "executors"

    id: str = Field(primary_key=True)
    heartbeat: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- wire models

MAX_LOCK_WAIT_SECONDS = 30 * 24 * 3600


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def _check_text(value: Any, where: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: text is not valid Unicode (a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _check_text(item, where)


class InputModel(WireModel):
    """A request body: an unknown field is refused with the list of accepted ones (a misspelt
    filter must not silently widen a search), and text must be valid Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        accepted = {f.alias or name for name, f in cls.model_fields.items()}
        names = accepted | set(cls.model_fields)
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise ValueError(
                f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"accepted fields: {', '.join(sorted(accepted))}"
            )
        for key, value in data.items():
            _check_text(value, str(key))
        return data


class LockSpec(InputModel):
    key: str = PField(max_length=256)


MAX_ENTRIES = 1000
MAX_VALUE = 65536


class JobSpec(InputModel):
    """What a portal asks ASCOB to run."""

    description: str | None = PField(default=None, max_length=4096)
    submitter: str | None = PField(default=None, max_length=256)
    labels: dict[
        Annotated[str, PField(max_length=256)], Annotated[str, PField(max_length=MAX_VALUE)]
    ] = PField(default_factory=dict, max_length=MAX_ENTRIES)
    parameters: dict[
        Annotated[str, PField(max_length=256)], Annotated[str, PField(max_length=MAX_VALUE)]
    ] = PField(default_factory=dict, max_length=MAX_ENTRIES)
    locks: list[LockSpec] = PField(default_factory=list, max_length=MAX_ENTRIES)
    manual_start: bool = PField(default=False, alias="manualStart", strict=True)
    runtime_variables: bool = PField(default=False, alias="runtimeVariables", strict=True)
    max_lock_wait_seconds: int | None = PField(
        default=None,
        alias="maxLockWaitSeconds",
        strict=True,
        gt=0,
        le=MAX_LOCK_WAIT_SECONDS,
        description="Longest wait for the locks, in seconds: a run that waited longer ends "
        'ABORTED ("waited N s for locks held by run X"). Absent: wait as long as needed.',
    )

    @field_validator("labels", "parameters", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("locks", mode="before")
    @classmethod
    def _none_is_no_locks(cls, value: Any) -> Any:
        return [] if value is None else value

    def wire(self) -> dict[str, Any]:
        data = self.model_dump(by_alias=True)
        if data.get("maxLockWaitSeconds") is None:
            data.pop("maxLockWaitSeconds", None)  # as the original: no new key when unset
        return data


class SubmitRequest(InputModel):
    job_spec: JobSpec = PField(alias="jobSpec")


class SubmitResponse(WireModel):
    run_id: int = PField(serialization_alias="runId")


class RunInfo(WireModel):
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

    @model_serializer(mode="wrap")
    def _drop_absent_extras(self, handler: Any) -> dict[str, Any]:
        # the original ASCOB fields are always there (null included); extras only when set
        data: dict[str, Any] = handler(self)
        for extra in ("waitingFor", "waiting_for"):
            if extra in data and data[extra] is None:
                del data[extra]
        return data

    @field_serializer("defined_time", "submission_time", "end_time")
    def _wire_time(self, value: datetime | None) -> str | None:
        return wire_time(value)

    @classmethod
    def of(cls, run: Run) -> RunInfo:
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


MAX_TOKEN_EXPIRY = 10 * 366 * 24 * 3600


class CreateTokenRequest(InputModel):
    permissions: list[str] = PField(default_factory=list)
    expiry_seconds: int = PField(
        default=0,
        alias="expirySeconds",
        strict=True,
        ge=0,
        le=MAX_TOKEN_EXPIRY,
        description="Seconds until the token expires (at most ten years); 0: never.",
    )


class CreateTokenResponse(WireModel):
    secret: str


class TokenDeleted(WireModel):
    identifier: str
    status: str = "deleted"


class FileUploaded(WireModel):
    run_id: int = PField(serialization_alias="runId")
    file_id: str = PField(serialization_alias="fileId")
    size: int


class WhoAmIResponse(WireModel):
    authorities: list[str]


class ErrorPayload(WireModel):
    status: int
    error: str


# --------------------------------------------------------------------------- installation


class Installation(SQLModel, table=True):
    """The identity of the installation this repository is (one row, created once): its flow
    runs carry it, so no executor touches another installation's flow runs."""

    __tablename__ = "installation"

    id: int = Field(default=1, primary_key=True)
    installation_id: str
    created: datetime = Field(default_factory=utcnow)
