"""The wire models of the REST API: what portals send and receive (pydantic only).

The server validates with them and the Python client (:mod:`ascob_api.client`) speaks them: one
definition, importable without the server's dependencies (no SQL, no Prefect).
"""

from __future__ import annotations

from ascob_api.wire.base import (
    MAX_LOCK_WAIT_SECONDS,
    InputModel,
    WireModel,
)
from ascob_api.wire.runs import (
    CallbackAttemptView,
    CallbackList,
    CallbackView,
    DryRunLock,
    DryRunResult,
    EventsTicket,
    FileUploaded,
    RunInfo,
    SearchRunRequest,
    SearchRunResponse,
    WebhookUpdate,
)
from ascob_api.wire.security import (
    MAX_TOKEN_EXPIRY,
    AuditEntry,
    AuditResponse,
    CreateTokenRequest,
    CreateTokenResponse,
    ErrorPayload,
    TokenDeleted,
    TokenInfo,
    TokenList,
    WhoAmIResponse,
)
from ascob_api.wire.spec import (
    MAX_ENTRIES,
    MAX_VALUE,
    JobSpec,
    JobSpecBuilder,
    LockSpec,
    SubmitRequest,
    SubmitResponse,
)

__all__ = [
    "MAX_ENTRIES",
    "MAX_LOCK_WAIT_SECONDS",
    "MAX_TOKEN_EXPIRY",
    "MAX_VALUE",
    "AuditEntry",
    "AuditResponse",
    "CallbackAttemptView",
    "CallbackList",
    "CallbackView",
    "CreateTokenRequest",
    "CreateTokenResponse",
    "DryRunLock",
    "DryRunResult",
    "ErrorPayload",
    "EventsTicket",
    "FileUploaded",
    "InputModel",
    "JobSpec",
    "JobSpecBuilder",
    "LockSpec",
    "RunInfo",
    "SearchRunRequest",
    "SearchRunResponse",
    "SubmitRequest",
    "SubmitResponse",
    "TokenDeleted",
    "TokenInfo",
    "TokenList",
    "WebhookUpdate",
    "WhoAmIResponse",
    "WireModel",
]
