"""The callbacks aggregate: the outbox of callback deliveries, filled by the steps that end a run
(in their own transaction: a callback owed is never lost) and drained by the sender."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from ascob_api.models import CallbackDelivery
from ascob_api.repository.base import Store
from ascob_flows.clock import utcnow


def owe_callback(s: Session, run_id: int, url: str, retry_seconds: float) -> None:
    """Add a delivery to the session's transaction, to be tried for ``retry_seconds``."""
    s.add(
        CallbackDelivery(
            run_id=run_id, url=url, deadline=utcnow() + timedelta(seconds=retry_seconds)
        )
    )


class Callbacks(Store):
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
