"""The synchronous client."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
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


class Client(_Api):
    """The synchronous client. A context manager; or call :meth:`close`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, token)
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers(), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _do(self, call: _Call[T]) -> T:
        for attempt in range(RETRIES):
            try:
                response = self._http.request(
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
                time.sleep(RETRY_DELAY * 2**attempt)
                continue
            if _retryable(call, attempt, response):
                time.sleep(RETRY_DELAY * 2**attempt)
                continue
            return self._check(call, response)
        raise AssertionError("unreachable")

    def submit(self, spec: JobSpec | Mapping[str, Any], idempotency_key: str | None = None) -> int:
        """Submit a job; its run id. With ``idempotency_key``, a retry never makes two runs."""
        return self._do(self._submit(spec, idempotency_key))

    def get(self, run_id: int) -> RunInfo:
        return self._do(self._get(run_id))

    def refresh(self, run_id: int) -> RunInfo:
        return self._do(self._refresh(run_id))

    def stop(self, run_id: int, force: bool = False) -> RunInfo:
        return self._do(self._stop(run_id, force))

    def start(self, run_id: int) -> RunInfo:
        return self._do(self._start(run_id))

    def resubmit(self, run_id: int, submitter: str) -> int:
        return self._do(self._resubmit(run_id, submitter))

    def upload(self, run_id: int, file_id: str, data: bytes) -> None:
        self._do(self._upload(run_id, file_id, data))

    def output(self, run_id: int, offset: int = 0) -> Output:
        return self._do(self._output(run_id, offset))

    def search(
        self,
        submitter: str | None = None,
        statuses: list[str] | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int = 200,
    ) -> Iterator[RunInfo]:
        """Every matching run, newest first, page by page (the time filters are strict)."""
        before = created_before
        while True:
            page = self._do(
                self._search_page(submitter, statuses, created_after, before, page_size)
            )
            yield from page
            if len(page) < page_size:
                return
            before = page[-1].defined_time

    def wait(self, run_id: int, timeout: float | None = None, poll: float = 1.0) -> RunInfo:
        """The run's final RunInfo, once it is final (WaitTimeout after ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.get(run_id)
            if info.status.is_final:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"run {run_id} still {info.status.value} after {timeout} s")
            time.sleep(poll if deadline is None else min(poll, deadline - time.monotonic()))

    def follow(self, run_id: int, timeout: float | None = None) -> Iterator[Event]:
        """Status changes and output lines as they come, until the run ends; a dropped
        connection is resumed after the last event seen (nothing repeated, nothing lost)."""
        parser = _SseParser()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                with self._http.stream(
                    "GET",
                    f"/api/runs/{run_id}/events",
                    headers=parser.resume_headers(),
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _error_for(response)
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            yield event
                            if event.kind == "end":
                                return
                        if deadline is not None and time.monotonic() >= deadline:
                            raise WaitTimeout(f"run {run_id}: still going after {timeout} s")
            except httpx.TransportError:
                time.sleep(RETRY_DELAY)  # dropped: resume after the last event seen

    def audit(self, run_id: int | None = None) -> list[AuditEntry]:
        return self._do(self._audit(run_id))

    def callbacks(self, run_id: int) -> list[CallbackView]:
        return self._do(self._callbacks(run_id))

    def locks(self) -> Any:
        return self._do(self._locks())

    def backends(self) -> Any:
        return self._do(self._backends())

    def whoami(self) -> Any:
        return self._do(self._whoami())

    def tokens(self) -> list[TokenInfo]:
        return self._do(self._tokens())

    def create_token(self, identifier: str, permissions: list[str], expiry: int = 0) -> str:
        """A new token's secret (shown once)."""
        return self._do(self._create_token(identifier, permissions, expiry))

    def revoke_token(self, identifier: str) -> None:
        self._do(self._revoke_token(identifier))
