"""Automation backends and their registry. Depends on nothing else of ASCOB."""

from backends.base import (
    BACKEND_ID_LABEL,
    Backend,
    BackendContext,
    BackendError,
    BackendStatus,
    BackendUnavailable,
    Job,
    JobNotFound,
    OutcomeUnknown,
    OutputChunk,
    SpecRejected,
    StatusReport,
    SubmitRefused,
    SubmitUnknown,
)
from backends.registry import BackendRegistry, UnknownBackend

__all__ = [
    "BACKEND_ID_LABEL",
    "Backend",
    "BackendContext",
    "BackendError",
    "BackendRegistry",
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
    "UnknownBackend",
]
