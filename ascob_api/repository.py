"""The run repository over SQLModel: runs, files, tokens and executors.

It implements :class:`ascob_flows.ports.RunRepository` for the engine, and the queries the REST
API needs. Every state change is one conditional UPDATE, so several API replicas and executors
can share the database.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ascob_api.db import read_only
from ascob_api.errors import NotFound
from ascob_api.models import (
    ApiToken,
    AuditEvent,
    CallbackDelivery,
    Executor,
    IdempotencyKey,
    Run,
    RunFile,
)
from ascob_flows.clock import utcnow
from ascob_flows.errors import RunNotFound
from ascob_flows.machine import Stage, Step
from ascob_flows.ports import KeysUpdate, RunRecord
from ascob_flows.status import FINAL_STATUSES, RunStatus

_FINAL = [s.value for s in FINAL_STATUSES]


class DuplicateKey(Exception):
    """The idempotency key was used before, for ``run_id`` (its body hashed as ``request_hash``)."""

    def __init__(self, run_id: int, request_hash: str) -> None:
        super().__init__(f"idempotency key already used for run {run_id}")
        self.run_id, self.request_hash = run_id, request_hash


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Repository:
    """All SQL access of ASCOB. Thread-safe: one short session per call."""

    def __init__(self, engine: Engine, callback_retry_seconds: float = 24 * 3600) -> None:
        self.engine = engine
        self.callback_retry_seconds = callback_retry_seconds
        self._reader = read_only(engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session that only reads: on SQLite it does not take the write lock."""
        with Session(self._reader, expire_on_commit=False) as session:
            yield session

    # ------------------------------------------------------------------ runs (API side)

    def add_run(self, run: Run, finish: Any = None, claim: IdempotencyKey | None = None) -> Run:
        """Insert a run; ``finish(run)`` may complete it once its id is known (same transaction).

        With ``claim``, the idempotency key is recorded in the same transaction: if another
        submission holds it already (also one committing at the same moment), nothing is
        inserted and :class:`DuplicateKey` names that submission's run."""
        with self.session() as s:
            if claim is not None:
                s.exec(delete(IdempotencyKey).where(col(IdempotencyKey.expires_at) < utcnow()))
                existing = s.get(IdempotencyKey, (claim.owner, claim.key))
                if existing is not None:
                    raise DuplicateKey(existing.run_id, existing.request_hash)
            s.add(run)
            s.flush()
            if finish is not None:
                finish(run)
            if claim is not None:
                assert run.id is not None
                claim.run_id = run.id
                s.add(claim)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                if claim is None:
                    raise
                with self.reading() as r:
                    found = r.get(IdempotencyKey, (claim.owner, claim.key))
                if found is None:
                    raise
                raise DuplicateKey(found.run_id, found.request_hash) from None
            return run

    def get_run(self, run_id: int) -> Run:
        with self.reading() as s:
            run = s.get(Run, run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} not found")
        return run

    def get_run_by_webhook(self, webhook_id: str) -> Run:
        with self.reading() as s:
            run = s.exec(select(Run).where(Run.webhook_id == webhook_id)).first()
        if run is None:
            raise RunNotFound("webhook not found")
        return run

    def search(
        self,
        *,
        submitter: str | None,
        statuses: list[RunStatus] | None,
        created_after: datetime | None,
        created_before: datetime | None,
        limit: int,
    ) -> list[Run]:
        query = select(Run)
        if submitter:
            query = query.where(Run.submitter == submitter)
        if statuses:
            query = query.where(col(Run.status).in_([s.value for s in statuses]))
        # strict on both ends, as the original: a portal paging by time never sees a run twice
        if created_after:
            query = query.where(Run.defined_time > created_after)
        if created_before:
            query = query.where(Run.defined_time < created_before)
        query = query.order_by(col(Run.defined_time).desc(), col(Run.id).desc()).limit(limit)
        with self.reading() as s:
            return list(s.exec(query).all())

    # ------------------------------------------------------------------ files

    def put_file(self, run_id: int, file_id: str, content: bytes) -> None:
        with self.session() as s:
            existing = s.get(RunFile, (run_id, file_id))
            if existing is None:
                s.add(RunFile(run_id=run_id, file_id=file_id, content=content, size=len(content)))
            else:
                existing.content = content
                existing.size = len(content)
                existing.created_at = utcnow()
                s.add(existing)
            s.commit()

    def get_file(self, run_id: int, file_id: str) -> RunFile:
        with self.reading() as s:
            found = s.get(RunFile, (run_id, file_id))
        if found is None:
            raise NotFound(f"file {file_id!r} not found")
        return found

    # ------------------------------------------------------------------ tokens

    def create_token(self, identifier: str, permissions: list[str], expiry_seconds: int) -> str:
        secret = secrets.token_urlsafe(32)
        expires = utcnow() + timedelta(seconds=expiry_seconds) if expiry_seconds else None
        with self.session() as s:
            s.exec(delete(ApiToken).where(col(ApiToken.identifier) == identifier))
            s.add(
                ApiToken(
                    identifier=identifier,
                    secret_hash=hash_secret(secret),
                    permissions=permissions,
                    expires_at=expires,
                )
            )
            s.commit()
        return secret

    def delete_token(self, identifier: str) -> None:
        with self.session() as s:
            token = s.get(ApiToken, identifier)
            if token is None:
                raise NotFound(f"token {identifier!r} not found")
            s.delete(token)
            s.commit()

    def find_token(self, secret: str) -> ApiToken | None:
        with self.reading() as s:
            token = s.exec(
                select(ApiToken).where(ApiToken.secret_hash == hash_secret(secret))
            ).first()
        if token is None or (token.expires_at is not None and token.expires_at <= utcnow()):
            return None
        return token

    def list_tokens(self) -> list[ApiToken]:
        with self.reading() as s:
            return list(s.exec(select(ApiToken).order_by(col(ApiToken.identifier))).all())

    # ------------------------------------------------------------------ audit

    def audit(
        self,
        actor: str,
        action: str,
        run_id: int | None = None,
        target: str | None = None,
        **details: Any,
    ) -> None:
        """Record who did what (never a secret: callers pass identifiers and statuses)."""
        with self.session() as s:
            s.add(
                AuditEvent(
                    actor=actor, action=action, run_id=run_id, target=target, details=details
                )
            )
            s.commit()

    def search_audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        run_id: int | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
        limit: int = 1000,
    ) -> list[AuditEvent]:
        query = select(AuditEvent)
        if actor:
            query = query.where(AuditEvent.actor == actor)
        if action:
            query = query.where(AuditEvent.action == action)
        if run_id is not None:
            query = query.where(AuditEvent.run_id == run_id)
        if after:
            query = query.where(AuditEvent.at > after)
        if before:
            query = query.where(AuditEvent.at < before)
        query = query.order_by(col(AuditEvent.id).desc()).limit(limit)
        with self.reading() as s:
            return list(s.exec(query).all())

    # ------------------------------------------------------------------ engine port

    def get_record(self, run_id: int) -> RunRecord:
        return to_record(self.get_run(run_id))

    def apply(
        self,
        run_id: int,
        step: Step,
        *,
        keys: KeysUpdate | None = None,
        owner: str | None = None,
        **fields: Any,
    ) -> Stage | None:
        """Apply one step of the run's state machine in one transaction: only if the run is in
        one of the step's from-stages (and, given ``owner``, no other executor owns it).
        ``keys`` computes the new identification keys from the stored ones (under the same row
        lock). Returns the new stage, or None (nothing changed)."""
        with self.session() as s:
            row = s.execute(
                sa_select(
                    col(Run.status),
                    col(Run.dispatch_started),
                    col(Run.identification_keys),
                    col(Run.end_time),
                    col(Run.effective_spec),
                    col(Run.executor_id),
                )
                .where(col(Run.id) == run_id)
                .with_for_update()
            ).first()
            if row is None:
                raise RunNotFound(f"run {run_id} not found")
            status, started, current_keys, end_time, spec, executor = row
            if owner is not None and executor not in (None, owner):
                return None  # taken over: the step is the new owner's to take
            target = step.target(Stage.of(RunStatus(status), started))
            if target is None:
                return None
            values: dict[str, Any] = {"status": target.status.value, **fields}
            if target in (Stage.DISPATCHING, Stage.PENDING_SUBMIT):
                values["dispatch_started"] = target is Stage.DISPATCHING
            if target.status.is_final and end_time is None and "end_time" not in values:
                values["end_time"] = utcnow()
            if target.status.is_final and not RunStatus(status).is_final:
                values["flow_unsettled"] = True
            if keys is not None:
                values["identification_keys"] = keys(dict(current_keys or {}))
            s.exec(update(Run).where(col(Run.id) == run_id).values(**values))
            url = (spec or {}).get("callbackUrl")
            if url and target.status.is_final and not RunStatus(status).is_final:
                # the run ends: its callback is owed, in the same transaction (never lost)
                now = utcnow()
                s.add(
                    CallbackDelivery(
                        run_id=run_id,
                        url=url,
                        deadline=now + timedelta(seconds=self.callback_retry_seconds),
                    )
                )
            s.commit()
            return target

    # ------------------------------------------------------------------ callbacks

    def claim_callbacks(self, limit: int, lease_seconds: float) -> list[CallbackDelivery]:
        """Due deliveries, each claimed for ``lease_seconds`` (one sender at a time)."""
        now = utcnow()
        claimed: list[CallbackDelivery] = []
        with self.reading() as r:
            due = r.exec(
                select(CallbackDelivery)
                .where(CallbackDelivery.state == "pending")
                .where(col(CallbackDelivery.next_attempt_at) <= now)
                .where(
                    or_(
                        col(CallbackDelivery.claimed_until).is_(None),
                        col(CallbackDelivery.claimed_until) < now,
                    )
                )
                .order_by(col(CallbackDelivery.next_attempt_at))
                .limit(limit)
            ).all()
        for delivery in due:
            with self.session() as s:
                result = s.exec(
                    update(CallbackDelivery)
                    .where(col(CallbackDelivery.id) == delivery.id)
                    .where(col(CallbackDelivery.state) == "pending")
                    .where(
                        or_(
                            col(CallbackDelivery.claimed_until).is_(None),
                            col(CallbackDelivery.claimed_until) < now,
                        )
                    )
                    .values(
                        claimed_until=now + timedelta(seconds=lease_seconds),
                        attempts=CallbackDelivery.attempts + 1,
                        last_attempt_at=now,
                    )
                )
                s.commit()
            if result.rowcount:
                delivery.attempts += 1
                claimed.append(delivery)
        return claimed

    def callback_delivered(self, delivery_id: int, status: int | None) -> None:
        self._callback_update(
            delivery_id,
            state="delivered",
            delivered_at=utcnow(),
            last_status=status,
            last_error=None,
            claimed_until=None,
        )

    def callback_failed(
        self, delivery_id: int, status: int | None, error: str, retry_at: datetime | None
    ) -> None:
        fields: dict[str, Any] = {"last_status": status, "last_error": error[:1000]}
        if retry_at is None:
            fields.update(state="failed", claimed_until=None)
        else:
            fields.update(next_attempt_at=retry_at, claimed_until=None)
        self._callback_update(delivery_id, **fields)

    def _callback_update(self, delivery_id: int, **fields: Any) -> None:
        with self.session() as s:
            s.exec(
                update(CallbackDelivery)
                .where(col(CallbackDelivery.id) == delivery_id)
                .values(**fields)
            )
            s.commit()

    def callbacks_of(self, run_id: int) -> list[CallbackDelivery]:
        with self.reading() as s:
            return list(
                s.exec(
                    select(CallbackDelivery)
                    .where(CallbackDelivery.run_id == run_id)
                    .order_by(col(CallbackDelivery.id))
                ).all()
            )

    def update_fields(self, run_id: int, **fields: Any) -> None:
        with self.session() as s:
            s.exec(update(Run).where(col(Run.id) == run_id).values(**fields))
            s.commit()

    def runs_to_launch(self, limit: int, older_than: float = 0.0) -> list[int]:
        query = (
            select(Run.id)
            .where(Run.launch_requested == True)  # noqa: E712
            .where(col(Run.flow_run_id).is_(None))
            .where(col(Run.status).not_in(_FINAL))
            .order_by(col(Run.id))
            .limit(limit)
        )
        if older_than > 0:
            query = query.where(col(Run.defined_time) <= utcnow() - timedelta(seconds=older_than))
        with self.reading() as s:
            return [i for i in s.exec(query).all() if i is not None]

    def set_flow_run(self, run_id: int, flow_run_id: str) -> None:
        with self.session() as s:
            s.exec(
                update(Run)
                .where(col(Run.id) == run_id)
                .where(col(Run.flow_run_id).is_(None))
                .values(flow_run_id=flow_run_id)
            )
            s.commit()

    def claim_for_executor(self, run_id: int, executor_id: str, expected: str | None) -> bool:
        stmt = update(Run).where(col(Run.id) == run_id)
        if expected is None:
            stmt = stmt.where(col(Run.executor_id).is_(None))
        else:
            stmt = stmt.where(col(Run.executor_id) == expected)
        with self.session() as s:
            result = s.exec(stmt.values(executor_id=executor_id))
            s.commit()
            return bool(result.rowcount)

    def taken_over(self, executor_id: str, run_ids: Iterable[int]) -> list[int]:
        ids = sorted(set(run_ids))
        if not ids:
            return []
        query = (
            select(Run.id)
            .where(col(Run.id).in_(ids))
            .where(col(Run.executor_id).is_not(None))
            .where(col(Run.executor_id) != executor_id)
        )
        with self.reading() as s:
            return [i for i in s.exec(query).all() if i]

    def orphaned_runs(self, executor_id: str, alive: Iterable[str], limit: int) -> list[int]:
        alive = [a for a in alive if a != executor_id]
        query = (
            select(Run.id)
            .where(col(Run.flow_run_id).is_not(None))
            .where(col(Run.executor_id).is_not(None))
            .where(col(Run.status).not_in(_FINAL))
        )
        if alive:
            query = query.where(col(Run.executor_id).not_in(alive))
        with self.reading() as s:
            return [i for i in s.exec(query.order_by(col(Run.id)).limit(limit)).all() if i]

    def unsettled_runs(self, executor_id: str, alive: Iterable[str], limit: int) -> list[int]:
        """Ended runs whose flow run may not show it: their executor (another one, gone, or
        this one in a previous life) stopped between the run's end and its flow run's."""
        alive = [a for a in alive if a != executor_id]
        query = (
            select(Run.id)
            .where(Run.flow_unsettled == True)  # noqa: E712
            .where(col(Run.flow_run_id).is_not(None))
            .where(col(Run.executor_id).is_not(None))
            .where(col(Run.status).in_(_FINAL))
        )
        if alive:
            query = query.where(col(Run.executor_id).not_in(alive))
        with self.reading() as s:
            return [i for i in s.exec(query.order_by(col(Run.id)).limit(limit)).all() if i]

    def statuses(self, run_ids: Iterable[int]) -> dict[int, RunStatus]:
        ids = list(run_ids)
        out: dict[int, RunStatus] = {}
        with self.reading() as s:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = s.exec(select(Run.id, Run.status).where(col(Run.id).in_(chunk))).all()
                out.update({rid: RunStatus(st) for rid, st in rows if rid is not None})
        return out

    def run_for_flow_run(self, flow_run_id: str) -> int | None:
        with self.reading() as s:
            return s.exec(select(Run.id).where(Run.flow_run_id == flow_run_id)).first()

    def register_spec(self, job_spec: Mapping[str, Any], flow_run_id: str) -> int:
        raise NotImplementedError  # replaced by the service layer (see ascob_api.service)

    # ------------------------------------------------------------------ executors

    def executor_heartbeat(self, executor_id: str, ttl: float) -> None:
        now = utcnow()
        with self.session() as s:
            row = s.get(Executor, executor_id)
            if row is None:
                row = Executor(id=executor_id)
            row.heartbeat = now
            row.expires_at = now + timedelta(seconds=ttl)
            s.add(row)
            s.commit()

    def live_executors(self) -> list[str]:
        with self.reading() as s:
            return list(s.exec(select(Executor.id).where(Executor.expires_at > utcnow())).all())

    def executor_alive_elsewhere(self, executor_id: str) -> bool:
        with self.reading() as s:
            row = s.get(Executor, executor_id)
        return row is not None and row.expires_at > utcnow()

    def retire_executor(self, executor_id: str) -> None:
        with self.session() as s:
            s.exec(delete(Executor).where(col(Executor.id) == executor_id))
            s.commit()

    def count_runs(self) -> int:
        with self.reading() as s:
            return int(s.exec(select(func.count()).select_from(Run)).one())

    def active_run_ids(self) -> list[int]:
        with self.reading() as s:
            rows = s.exec(select(Run.id).where(or_(col(Run.status).not_in(_FINAL)))).all()
        return [r for r in rows if r is not None]

    def installation_id(self) -> str:
        """This installation's identity, created once (the first process to ask wins)."""
        from sqlalchemy.exc import IntegrityError

        from ascob_api.models import Installation

        with self.reading() as s:
            row = s.get(Installation, 1)
        if row is not None:
            return row.installation_id
        try:
            with self.session() as s:
                s.add(Installation(id=1, installation_id=secrets.token_hex(6)))
                s.commit()
        except IntegrityError:
            pass  # another process created it meanwhile
        with self.reading() as s:
            row = s.get(Installation, 1)
        assert row is not None
        return row.installation_id


def to_record(run: Run) -> RunRecord:
    assert run.id is not None
    spec = run.effective_spec
    return RunRecord(
        id=run.id,
        status=RunStatus(run.status),
        description=spec.get("description"),
        submitter=spec.get("submitter"),
        backend_id=run.backend_id,
        labels=dict(spec.get("labels") or {}),
        parameters=dict(spec.get("parameters") or {}),
        lock_keys=tuple(run.lock_keys),
        webhook_id=run.webhook_id,
        identification_keys=dict(run.identification_keys or {}),
        flow_run_id=run.flow_run_id,
        executor_id=run.executor_id,
        dispatch_started=run.dispatch_started,
        abort_force=run.abort_force,
        stop_sent=run.stop_sent,
        defined_time=run.defined_time,
        max_lock_wait=spec.get("maxLockWaitSeconds"),
        waiting_since=run.waiting_since,
        message=run.message,
    )
