"""The asynchronous client: the same methods as :class:`~ascob_api.client.Client`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import httpx

from ascob_api.client.calls import (
    RETRIES,
    RETRY_DELAY,
    Event,
    Output,
    T,
    _Api,
    _Call,
    _retryable,
    _SseParser,
)
from ascob_api.client.errors import ConnectionFailed, WaitTimeout, _error_for
from ascob_api.wire import (
    AuditEntry,
    CallbackView,
    JobSpec,
    RunInfo,
    TokenInfo,
)


class AsyncClient(_Api):
    """The asynchronous client: the same methods as :class:`Client`, awaited."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, token)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers(), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _do(self, call: _Call[T]) -> T:
        for attempt in range(RETRIES):
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    content=call.content,
                    headers=call.headers,
                )
            except httpx.TransportError as exc:
                if not _retryable(call, attempt, None):
                    raise ConnectionFailed(f"{self.url}: {exc!r}") from exc
                await asyncio.sleep(RETRY_DELAY * 2**attempt)
                continue
            if _retryable(call, attempt, response):
                await asyncio.sleep(RETRY_DELAY * 2**attempt)
                continue
            return self._check(call, response)
        raise AssertionError("unreachable")

    async def submit(
        self, spec: JobSpec | Mapping[str, Any], idempotency_key: str | None = None
    ) -> int:
        return await self._do(self._submit(spec, idempotency_key))

    async def get(self, run_id: int) -> RunInfo:
        return await self._do(self._get(run_id))

    async def refresh(self, run_id: int) -> RunInfo:
        return await self._do(self._refresh(run_id))

    async def stop(self, run_id: int, force: bool = False) -> RunInfo:
        return await self._do(self._stop(run_id, force))

    async def start(self, run_id: int) -> RunInfo:
        return await self._do(self._start(run_id))

    async def resubmit(self, run_id: int, submitter: str) -> int:
        return await self._do(self._resubmit(run_id, submitter))

    async def upload(self, run_id: int, file_id: str, data: bytes) -> None:
        await self._do(self._upload(run_id, file_id, data))

    async def output(self, run_id: int, offset: int = 0) -> Output:
        return await self._do(self._output(run_id, offset))

    async def search(
        self,
        submitter: str | None = None,
        statuses: list[str] | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int = 200,
    ) -> AsyncIterator[RunInfo]:
        before = created_before
        while True:
            page = await self._do(
                self._search_page(submitter, statuses, created_after, before, page_size)
            )
            for info in page:
                yield info
            if len(page) < page_size:
                return
            before = page[-1].defined_time

    async def wait(self, run_id: int, timeout: float | None = None, poll: float = 1.0) -> RunInfo:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = await self.get(run_id)
            if info.status.is_final:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"run {run_id} still {info.status.value} after {timeout} s")
            await asyncio.sleep(
                poll if deadline is None else min(poll, deadline - time.monotonic())
            )

    async def follow(self, run_id: int, timeout: float | None = None) -> AsyncIterator[Event]:
        parser = _SseParser()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                async with self._http.stream(
                    "GET",
                    f"/api/runs/{run_id}/events",
                    headers=parser.resume_headers(),
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise _error_for(response)
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            yield event
                            if event.kind == "end":
                                return
                        if deadline is not None and time.monotonic() >= deadline:
                            raise WaitTimeout(f"run {run_id}: still going after {timeout} s")
            except httpx.TransportError:
                await asyncio.sleep(RETRY_DELAY)

    async def audit(self, run_id: int | None = None) -> list[AuditEntry]:
        return await self._do(self._audit(run_id))

    async def callbacks(self, run_id: int) -> list[CallbackView]:
        return await self._do(self._callbacks(run_id))

    async def locks(self) -> Any:
        return await self._do(self._locks())

    async def backends(self) -> Any:
        return await self._do(self._backends())

    async def whoami(self) -> Any:
        return await self._do(self._whoami())

    async def tokens(self) -> list[TokenInfo]:
        return await self._do(self._tokens())

    async def create_token(self, identifier: str, permissions: list[str], expiry: int = 0) -> str:
        return await self._do(self._create_token(identifier, permissions, expiry))

    async def revoke_token(self, identifier: str) -> None:
        await self._do(self._revoke_token(identifier))
