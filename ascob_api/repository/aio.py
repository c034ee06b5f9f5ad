"""The one async facade over the :class:`~ascob_api.repository.Repository`: what the engine's
port has (:class:`ascob_flows.ports.AsyncRunRepository`) and what the REST API reads and writes,
each call in a worker thread (every call is one short transaction)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING

from ascob_api.models import ApiToken, AuditEvent, CallbackAttempt, CallbackDelivery, Run
from ascob_flows.ports import AsyncRunRepository
from ascob_flows.status import RunStatus

if TYPE_CHECKING:
    from ascob_api.repository import Repository


class AsyncRepository(AsyncRunRepository):
    def __init__(self, sync: Repository) -> None:
        super().__init__(sync)
        self.repo = sync

    # ------------------------------------------------------------------ runs

    async def get_run(self, run_id: int) -> Run:
        return await asyncio.to_thread(self.repo.get_run, run_id)

    async def search(
        self,
        *,
        submitter: str | None,
        statuses: list[RunStatus] | None,
        created_after: datetime | None,
        created_before: datetime | None,
        limit: int,
    ) -> list[Run]:
        return await asyncio.to_thread(
            lambda: self.repo.search(
                submitter=submitter,
                statuses=statuses,
                created_after=created_after,
                created_before=created_before,
                limit=limit,
            )
        )

    # ------------------------------------------------------------------ tokens

    async def create_token(
        self, identifier: str, permissions: list[str], expiry_seconds: int
    ) -> str:
        return await asyncio.to_thread(
            self.repo.create_token, identifier, permissions, expiry_seconds
        )

    async def delete_token(self, identifier: str) -> None:
        await asyncio.to_thread(self.repo.delete_token, identifier)

    async def list_tokens(self) -> list[ApiToken]:
        return await asyncio.to_thread(self.repo.list_tokens)

    # ------------------------------------------------------------------ audit

    async def search_audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        run_id: int | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
        limit: int = 1000,
    ) -> list[AuditEvent]:
        return await asyncio.to_thread(
            lambda: self.repo.search_audit(
                actor=actor, action=action, run_id=run_id, after=after, before=before, limit=limit
            )
        )

    # ------------------------------------------------------------------ callbacks

    async def claim_callbacks(self, limit: int, lease_seconds: float) -> list[CallbackDelivery]:
        return await asyncio.to_thread(self.repo.claim_callbacks, limit, lease_seconds)

    async def callback_delivered(self, delivery_id: int, status: int | None) -> None:
        await asyncio.to_thread(self.repo.callback_delivered, delivery_id, status)

    async def callback_failed(
        self, delivery_id: int, status: int | None, error: str, retry_at: datetime | None
    ) -> None:
        await asyncio.to_thread(self.repo.callback_failed, delivery_id, status, error, retry_at)

    async def callbacks_of(self, run_id: int) -> list[CallbackDelivery]:
        return await asyncio.to_thread(self.repo.callbacks_of, run_id)

    async def callback_attempts_of(
        self, delivery_ids: list[int]
    ) -> dict[int, list[CallbackAttempt]]:
        return await asyncio.to_thread(self.repo.callback_attempts_of, delivery_ids)
