"""The audit aggregate: who did what, to which run (never a secret)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from ascob_api.models import AuditEvent
from ascob_api.repository.base import Store


def add_audit(
    s: Session,
    actor: str,
    action: str,
    run_id: int | None = None,
    target: str | None = None,
    **details: Any,
) -> None:
    """Add an audit row to the session's transaction (a step writes its audit this way)."""
    s.add(AuditEvent(actor=actor, action=action, run_id=run_id, target=target, details=details))


class Audit(Store):
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
            add_audit(s, actor, action, run_id, target, **details)
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
