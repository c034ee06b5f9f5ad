"""The runs' door: every write of a run's row after it is recorded.

A status changes only through :meth:`Door.apply`, one step of :mod:`ascob_flows.machine` in one
transaction (the row locked): the step's declared effects, the fields the step allows, and its
audit row. Anything else a step does not allow, ``status`` first of all, is refused before
anything is written. The other writes are named, one column each, none of them a status.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col

from ascob_api.models import Run
from ascob_api.repository.audit import add_audit
from ascob_api.repository.base import Store
from ascob_api.repository.callbacks import owe_callback
from ascob_flows.clock import utcnow
from ascob_flows.errors import RunNotFound
from ascob_flows.machine import Stage, Step
from ascob_flows.ports import AuditNote, KeysUpdate
from ascob_flows.status import RunStatus


class Door(Store):
    def __init__(self, engine: Engine, callback_retry_seconds: float = 24 * 3600) -> None:
        super().__init__(engine)
        self.callback_retry_seconds = callback_retry_seconds

    def apply(
        self,
        run_id: int,
        step: Step,
        *,
        keys: KeysUpdate | None = None,
        owner: str | None = None,
        audit: AuditNote | None = None,
        **fields: Any,
    ) -> Stage | None:
        """Apply one step of the run's state machine in one transaction: only if the run is in
        one of the step's from-stages (and, given ``owner``, no other executor owns it).
        ``keys`` computes the new identification keys from the stored ones (under the same row
        lock); ``audit`` is written in the same transaction. Returns the new stage, or None
        (nothing changed). Raises :class:`ascob_flows.machine.FieldNotAllowed` for a field the
        step does not allow (``status`` always)."""
        step.check(fields, keys=keys is not None)
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
            move = None
            if owner is None or executor in (None, owner):  # else taken over: not ours to take
                move = step.move(Stage.of(RunStatus(status), started))
            ended = RunStatus(status).is_final
            if audit is not None and audit.written(move is not None, ended):
                details: dict[str, Any] = dict(audit.details)
                if audit.says_applied:
                    details["applied"] = move is not None
                add_audit(s, audit.actor, audit.action, run_id, None, **details)
            if move is None:
                s.commit()  # the audit of a step that did not apply, if any
                return None
            values: dict[str, Any] = {**fields, "status": move.target.status.value}
            if move.dispatch_started is not None:
                values["dispatch_started"] = move.dispatch_started
            if move.stamps_end and end_time is None:
                values["end_time"] = utcnow()
            if move.unsettles_flow:
                values["flow_unsettled"] = True
            if keys is not None:
                values["identification_keys"] = keys(dict(current_keys or {}))
            s.exec(update(Run).where(col(Run.id) == run_id).values(**values))
            url = (spec or {}).get("callbackUrl")
            if url and move.owes_callback:
                # the run ends: its callback is owed, in the same transaction (never lost)
                owe_callback(s, run_id, url, self.callback_retry_seconds)
            s.commit()
            return move.target

    # ------------------------------------------------------------------ named writes

    def _set(self, run_id: int, **values: Any) -> None:
        with self.session() as s:
            s.exec(update(Run).where(col(Run.id) == run_id).values(**values))
            s.commit()

    def request_launch(self, run_id: int, actor: str) -> None:
        """A manual-start run is started: its flow run is wanted now (audited in the same
        transaction)."""
        with self.session() as s:
            s.exec(update(Run).where(col(Run.id) == run_id).values(launch_requested=True))
            add_audit(s, actor, "start", run_id)
            s.commit()

    def note(self, run_id: int, message: str) -> None:
        """Set the run's message (what the user is told of it), its status unchanged."""
        self._set(run_id, message=message)

    def record_backend_url(self, run_id: int, url: str) -> None:
        self._set(run_id, backend_url=url)

    def mark_stop_sent(self, run_id: int) -> None:
        self._set(run_id, stop_sent=True)

    def record_executor(self, run_id: int, executor_id: str | None) -> None:
        self._set(run_id, executor_id=executor_id)

    def settle_flow(self, run_id: int) -> None:
        """The run's flow run shows its final state: clear ``flow_unsettled``."""
        self._set(run_id, flow_unsettled=False)
