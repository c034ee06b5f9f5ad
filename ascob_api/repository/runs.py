"""The runs aggregate, read side and bookkeeping: recording a run (with its idempotency key),
finding runs, and the queries of the launcher, the reaper and the executors. Status changes go
through the door (:mod:`ascob_api.repository.door`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from ascob_api.models import IdempotencyKey, Run
from ascob_api.repository.base import FINAL, Store
from ascob_flows.clock import utcnow
from ascob_flows.errors import RunNotFound
from ascob_flows.ports import RunRecord
from ascob_flows.status import RunStatus


class DuplicateKey(Exception):
    """The idempotency key was used before, for ``run_id`` (its body hashed as ``request_hash``)."""

    def __init__(self, run_id: int, request_hash: str) -> None:
        super().__init__(f"idempotency key already used for run {run_id}")
        self.run_id, self.request_hash = run_id, request_hash


class Runs(Store):
    def add_run(
        self,
        run: Run,
        finish: Callable[[Run], None] | None = None,
        claim: IdempotencyKey | None = None,
    ) -> Run:
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

    def get_record(self, run_id: int) -> RunRecord:
        return to_record(self.get_run(run_id))

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

    def count_runs(self) -> int:
        with self.reading() as s:
            return int(s.exec(select(func.count()).select_from(Run)).one())

    def active_run_ids(self) -> list[int]:
        with self.reading() as s:
            rows = s.exec(select(Run.id).where(or_(col(Run.status).not_in(FINAL)))).all()
        return [r for r in rows if r is not None]

    def statuses(self, run_ids: Iterable[int]) -> dict[int, RunStatus]:
        ids = list(run_ids)
        out: dict[int, RunStatus] = {}
        with self.reading() as s:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = s.exec(select(Run.id, Run.status).where(col(Run.id).in_(chunk))).all()
                out.update({rid: RunStatus(st) for rid, st in rows if rid is not None})
        return out

    # ------------------------------------------------------------------ flow runs, executors

    def runs_to_launch(self, limit: int, older_than: float = 0.0) -> list[int]:
        query = (
            select(Run.id)
            .where(Run.launch_requested == True)  # noqa: E712
            .where(col(Run.flow_run_id).is_(None))
            .where(col(Run.status).not_in(FINAL))
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

    def run_for_flow_run(self, flow_run_id: str) -> int | None:
        with self.reading() as s:
            return s.exec(select(Run.id).where(Run.flow_run_id == flow_run_id)).first()

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
            .where(col(Run.status).not_in(FINAL))
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
            .where(col(Run.status).in_(FINAL))
        )
        if alive:
            query = query.where(col(Run.executor_id).not_in(alive))
        with self.reading() as s:
            return [i for i in s.exec(query.order_by(col(Run.id)).limit(limit)).all() if i]


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
