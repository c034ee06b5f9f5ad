"""SQLModel tables (never returned by the API) and the public wire models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_serializer, field_validator, model_serializer
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


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class LockSpec(WireModel):
    key: str


class JobSpec(WireModel):
    """What a portal asks ASCOB to run."""

    description: str | None = None
    submitter: str | None = None
    labels: dict[str, str] = PField(default_factory=dict)
    parameters: dict[str, str] = PField(default_factory=dict)
    locks: list[LockSpec] = PField(default_factory=list)
    manual_start: bool = PField(default=False, alias="manualStart")
    runtime_variables: bool = PField(default=False, alias="runtimeVariables")

    @field_validator("labels", "parameters", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("locks", mode="before")
    @classmethod
    def _none_is_no_locks(cls, value: Any) -> Any:
        return [] if value is None else value

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class SubmitRequest(WireModel):
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
        description="WAITING_LOCKS only: the runs this run waits for (holders, then earlier "
        "waiters of its locks). Absent otherwise.",
    )

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
        )


class SearchRunRequest(WireModel):
    submitter_filter: str | None = PField(default=None, alias="submitterFilter")
    status_filter: list[RunStatus] | None = PField(default=None, alias="statusFilter")
    created_after_filter: datetime | None = PField(default=None, alias="createdAfterFilter")
    created_before_filter: datetime | None = PField(default=None, alias="createdBeforeFilter")
    max_results: int | None = PField(default=None, alias="maxResults", ge=0)

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


class WebhookUpdate(WireModel):
    status: RunStatus | None = None
    identification_keys: dict[str, str] | None = PField(default=None, alias="identificationKeys")

    @field_validator("status", mode="before")
    @classmethod
    def _parse_status(cls, value: Any) -> Any:
        return RunStatus.parse(value) if isinstance(value, str) else value


class CreateTokenRequest(WireModel):
    permissions: list[str] = PField(default_factory=list)
    expiry_seconds: int = PField(default=0, alias="expirySeconds", ge=0)


class CreateTokenResponse(WireModel):
    secret: str


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
