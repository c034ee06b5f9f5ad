"""SQLModel tables: never returned by the API (its wire models are :mod:`ascob_api.wire`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary
from sqlmodel import Field, SQLModel

from ascob_flows.clock import utcnow
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
    # the run ended and its flow run may not show it yet: set with the final status, cleared
    # once the flow run's final state is written (a reaper writes it if its executor died first)
    flow_unsettled: bool = Field(default=False, index=True)


class IdempotencyKey(SQLModel, table=True):
    """A portal's ``Idempotency-Key`` of a submission, per token: the run it created."""

    __tablename__ = "idempotency_keys"

    owner: str = Field(primary_key=True)  # the token's identity
    key: str = Field(primary_key=True)
    request_hash: str
    run_id: int
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)


class CallbackDelivery(SQLModel, table=True):
    """One run's final RunInfo to POST to its callbackUrl (ascob_api.callbacks)."""

    __tablename__ = "callback_deliveries"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(index=True)
    url: str
    state: str = Field(default="pending", index=True)  # pending, delivered, failed
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    claimed_until: datetime | None = None
    deadline: datetime
    last_attempt_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class CallbackAttempt(SQLModel, table=True):
    """One attempt of a callback delivery: when its answer (or error) came, the HTTP status if
    the receiver answered, the error if it failed (as webhook providers list deliveries)."""

    __tablename__ = "callback_attempts"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(index=True)
    at: datetime = Field(default_factory=utcnow)
    status: int | None = None
    error: str | None = None


class AuditEvent(SQLModel, table=True):
    """Who did what, when: an action on a run or a token. Never a secret."""

    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(
        index=True
    )  # a token's identifier, root, job-manager-N, webhook-N, prefect-ui
    action: str = Field(index=True)
    run_id: int | None = Field(default=None, index=True)
    target: str | None = None  # e.g. the token an action was about
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


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


# --------------------------------------------------------------------------- installation


class Installation(SQLModel, table=True):
    """The identity of the installation this repository is (one row, created once): its flow
    runs carry it, so no executor touches another installation's flow runs."""

    __tablename__ = "installation"

    id: int = Field(default=1, primary_key=True)
    installation_id: str
    created: datetime = Field(default_factory=utcnow)
