"""The executors aggregate: one row per live executor, renewed by its heartbeat."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete
from sqlmodel import col, select

from ascob_api.models import Executor
from ascob_api.repository.base import Store
from ascob_flows.clock import utcnow


class Executors(Store):
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
