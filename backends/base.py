"""The backend contract: what ASCOB needs from an automation backend.

A backend is a plugin with an ``id`` (``dummyBackend``, ``jenkinsBackend``, ...). It is found
through the entry-point group ``ascob.backends`` and built once per process with a
:class:`BackendContext`.

Exception tree::

    BackendError                 anything a backend raises on purpose
    ├── SpecRejected             the spec cannot run here (bad labels): 400 at submission
    ├── SubmitRefused            the backend certainly did NOT start the job: the run FAILS
    ├── BackendUnavailable       transient: try again later (polling keeps going)
    └── JobNotFound              the backend no longer knows the job
    OutcomeUnknown               (not a BackendError) submit's outcome cannot be known: IN_DOUBT

:class:`OutcomeUnknown`, like any other exception raised by :meth:`Backend.submit` that is no
BackendError, means the outcome is unknown: ASCOB marks the run IN_DOUBT and never sends it again.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "BACKEND_ID_LABEL",
    "Backend",
    "BackendContext",
    "BackendError",
    "BackendStatus",
    "BackendUnavailable",
    "Job",
    "JobNotFound",
    "OutcomeUnknown",
    "OutputChunk",
    "SpecRejected",
    "StatusReport",
    "SubmitRefused",
    "SubmitUnknown",
]

BACKEND_ID_LABEL = "_execution_backend_id"


class BackendError(Exception):
    """Base class of the errors a backend raises on purpose."""


class SpecRejected(BackendError):
    """The job spec cannot run on this backend (missing or bad labels)."""


class SubmitRefused(BackendError):
    """The backend refused the job: it certainly did not start it."""


class SubmitUnknown(BackendError):
    """The submission's answer was lost (a timeout, a 5xx), but the job, if it was started, can
    be found with ``keys`` (the trigger carried a value unique to this submission). ASCOB asks the
    backend's ``status`` with them for a while: it re-attaches if the job is there, and ends the
    run IN_DOUBT otherwise. Raise a plain exception when the job cannot be looked for."""

    def __init__(self, message: str, keys: Mapping[str, str]) -> None:
        super().__init__(message)
        self.keys = dict(keys)


class BackendUnavailable(BackendError):
    """A transient failure (network, 5xx): the same call may succeed later."""


class JobNotFound(BackendError):
    """The backend does not know the job these identification keys name."""


class OutcomeUnknown(RuntimeError):
    """The submission may or may not have started the job, and nothing can tell: the run ends
    IN_DOUBT and is never sent again. Deliberately not a :class:`BackendError`: it is neither a
    refusal nor a transient failure."""


class BackendStatus(StrEnum):
    """What a backend says of a job it received."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    ABORTED = "ABORTED"

    @property
    def is_final(self) -> bool:
        return self in (BackendStatus.SUCCEEDED, BackendStatus.FAILED, BackendStatus.ABORTED)


@dataclass(frozen=True)
class StatusReport:
    status: BackendStatus
    message: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class Job:
    """One ASCOB run as a backend sees it (the spec after runtime-variable substitution)."""

    run_id: int
    description: str | None
    submitter: str | None
    labels: Mapping[str, str]
    parameters: Mapping[str, str]
    webhook_id: str


@dataclass(frozen=True)
class OutputChunk:
    """Output from ``offset`` on: ``text``, the offset to ask next, and whether more may come."""

    text: str
    next_offset: int
    more: bool


@dataclass
class BackendContext:
    """What ASCOB hands a backend when it builds it."""

    data_dir: Path
    instances: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class Backend(abc.ABC):
    """An automation backend. Subclasses set ``id`` and implement the abstract methods."""

    id: ClassVar[str]
    can_stop: ClassVar[bool] = False
    # the section of the ASCOB_CONFIG file whose sub-tables are its instances (None: the
    # entry-point name)
    config_section: ClassVar[str | None] = None

    def __init__(self, context: BackendContext) -> None:
        self.context = context

    @abc.abstractmethod
    def accepts(self, labels: Mapping[str, str], description: str | None) -> bool:
        """Whether this backend takes a spec that does not name a backend."""

    def validate(self, labels: Mapping[str, str]) -> None:  # noqa: B027 - optional hook
        """Raise :class:`SpecRejected` if the labels cannot run here."""

    async def check(self, labels: Mapping[str, str], parameters: Mapping[str, str]) -> list[str]:
        """The dry run's deep check (``POST /api/runs/validate``): ask the backend's server
        whether this job could run (the job exists, takes these parameters...); raise
        :class:`SpecRejected` if not. Returns what was verified, for a person. By default only
        the cheap check, :meth:`validate`, which submission runs too."""
        self.validate(labels)
        return [f"{self.id}: the labels are valid (no deeper check for this backend)"]

    @abc.abstractmethod
    async def submit(self, job: Job) -> dict[str, str]:
        """Start the job; return the identification keys that find it again."""

    @abc.abstractmethod
    async def status(self, keys: Mapping[str, str]) -> StatusReport:
        """Ask the backend how the job is doing."""

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        """Stop the job (``force``: kill rather than ask)."""
        raise NotImplementedError(f"{self.id} cannot stop jobs")

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> OutputChunk:
        """The job's output from byte ``offset`` on."""
        return OutputChunk(text="", next_offset=offset, more=False)

    def merge_identification_keys(
        self, current: Mapping[str, str], reported: Mapping[str, str]
    ) -> dict[str, str]:
        """Identification keys sent later by the job through the webhook."""
        return {**current, **reported}

    @property
    def broken_instances(self) -> Mapping[str, str]:
        """Configured instances it cannot use, with the reason (reported by the registry)."""
        return {}

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
