"""The callbacks aggregate: the outbox of callback deliveries, filled by the steps that end a run
(in their own transaction: a callback owed is never lost) and drained by the sender."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from ascob_api.models import CallbackAttempt, CallbackDelivery
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
            CallbackAttempt(delivery_id=delivery_id, status=status),
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
        attempt = CallbackAttempt(delivery_id=delivery_id, status=status, error=error[:1000])
        self._callback_update(delivery_id, attempt, **fields)

    def _callback_update(self, delivery_id: int, attempt: CallbackAttempt, **fields: Any) -> None:
        """The delivery's new state and the attempt's record, in one transaction."""
        with self.session() as s:
            s.add(attempt)
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

    def callback_attempts_of(self, delivery_ids: list[int]) -> dict[int, list[CallbackAttempt]]:
        """Each delivery's attempts, oldest first."""
        found: dict[int, list[CallbackAttempt]] = {i: [] for i in delivery_ids}
        if not delivery_ids:
            return found
        with self.reading() as s:
            rows = s.exec(
                select(CallbackAttempt)
                .where(col(CallbackAttempt.delivery_id).in_(delivery_ids))
                .order_by(col(CallbackAttempt.id))
            ).all()
        for row in rows:
            found[row.delivery_id].append(row)
        return found
