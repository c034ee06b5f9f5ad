"""The wire models of the REST API: what portals send and receive (pydantic only).

The server validates with them and the Python client (:mod:`ascob_api.client`) speaks them: one
definition, importable without the server's dependencies (no SQL, no Prefect).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic import Field as PField

from ascob_flows.clock import wire_time
from ascob_flows.status import RunStatus

MAX_LOCK_WAIT_SECONDS = 30 * 24 * 3600


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _read_wire_names(cls, data: Any) -> Any:
        """Read what the server writes (``parentId``...) as well as the field names: the client
        parses the server's answers with these same models."""
        if not isinstance(data, dict):
            return data
        renames = {
            f.serialization_alias: name
            for name, f in cls.model_fields.items()
            if f.serialization_alias and f.serialization_alias != name and f.alias is None
        }
        if renames and any(key in renames for key in data):
            return {renames.get(key, key): value for key, value in data.items()}
        return data


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
    callback_url: str | None = PField(
        default=None,
        alias="callbackUrl",
        max_length=2048,
        description="When the run ends, its final RunInfo is POSTed here, signed (docs/api.md). "
        "http(s) only, to a destination the server's ASCOB_CALLBACK_ALLOWLIST names.",
    )
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

    @classmethod
    def builder(cls, submitter: str | None = None) -> JobSpecBuilder:
        """``JobSpec.builder("alice").description("restart web").label("jenkins_instance",
        "ci").parameter("ENV", "prod").lock("web").manual_start().build()``."""
        return JobSpecBuilder(submitter)

    def wire(self) -> dict[str, Any]:
        data = self.model_dump(by_alias=True)
        for extra in ("maxLockWaitSeconds", "callbackUrl"):
            if data.get(extra) is None:
                data.pop(extra, None)  # as the original: no new key when unset
        return data


class JobSpecBuilder:
    """A fluent JobSpec builder (the original ASCOB gave Java portals one); ``build()`` validates
    exactly as the server does."""

    def __init__(self, submitter: str | None = None) -> None:
        self._data: dict[str, Any] = {
            "submitter": submitter,
            "labels": {},
            "parameters": {},
            "locks": [],
        }

    def description(self, text: str) -> JobSpecBuilder:
        self._data["description"] = text
        return self

    def submitter(self, user: str) -> JobSpecBuilder:
        self._data["submitter"] = user
        return self

    def label(self, key: str, value: str) -> JobSpecBuilder:
        self._data["labels"][key] = value
        return self

    def backend(self, backend_id: str) -> JobSpecBuilder:
        """The backend that runs it (the label ``_execution_backend_id``)."""
        return self.label("_execution_backend_id", backend_id)

    def parameter(self, key: str, value: str) -> JobSpecBuilder:
        self._data["parameters"][key] = value
        return self

    def lock(self, key: str) -> JobSpecBuilder:
        self._data["locks"].append({"key": key})
        return self

    def manual_start(self, value: bool = True) -> JobSpecBuilder:
        self._data["manualStart"] = value
        return self

    def runtime_variables(self, value: bool = True) -> JobSpecBuilder:
        self._data["runtimeVariables"] = value
        return self

    def max_lock_wait(self, seconds: int) -> JobSpecBuilder:
        self._data["maxLockWaitSeconds"] = seconds
        return self

    def callback_url(self, url: str) -> JobSpecBuilder:
        self._data["callbackUrl"] = url
        return self

    def build(self) -> JobSpec:
        return JobSpec.model_validate(self._data)


class SubmitRequest(InputModel):
    job_spec: JobSpec = PField(alias="jobSpec")


class SubmitResponse(WireModel):
    run_id: int = PField(serialization_alias="runId")


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


class TokenDeleted(WireModel):
    identifier: str
    status: str = "deleted"


class FileUploaded(WireModel):
    run_id: int = PField(serialization_alias="runId")
    file_id: str = PField(serialization_alias="fileId")
    size: int


class WhoAmIResponse(WireModel):
    authorities: list[str]
    identifier: str | None = PField(
        default=None,
        description="The token's identifier (root, job-manager-N, webhook-N, or the name it was "
        "created with).",
    )


class AuditEntry(WireModel):
    id: int
    at: datetime
    actor: str
    action: str
    run_id: int | None = PField(default=None, serialization_alias="runId")
    target: str | None = None
    details: dict[str, Any] = PField(default_factory=dict)

    @field_serializer("at")
    def _wire_time(self, value: datetime) -> str | None:
        return wire_time(value)


class AuditResponse(WireModel):
    items: list[AuditEntry]


class TokenInfo(WireModel):
    identifier: str
    permissions: list[str]
    created_at: datetime = PField(serialization_alias="createdAt")
    expires_at: datetime | None = PField(default=None, serialization_alias="expiresAt")

    @field_serializer("created_at", "expires_at")
    def _wire_time(self, value: datetime | None) -> str | None:
        return wire_time(value)


class TokenList(WireModel):
    items: list[TokenInfo]


class ErrorPayload(WireModel):
    status: int
    error: str
