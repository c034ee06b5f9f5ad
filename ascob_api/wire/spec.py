"""What a portal submits: the JobSpec (and its builder) and the submission."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field as PField
from pydantic import (
    field_validator,
)

from ascob_api.wire.base import MAX_LOCK_WAIT_SECONDS, InputModel, WireModel


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
