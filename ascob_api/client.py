"""The Python client of the ASCOB REST API, for portals and scripts: :class:`Client` and
:class:`AsyncClient`, over the REST API only (so they work against any ASCOB server; the
original routes also against the original Java ASCOB).

::

    from ascob_api.client import Client, JobSpec

    spec = (JobSpec.builder("alice").description("restart web")
            .label("jenkins_instance", "ci").parameter("ENV", "prod").lock("web").build())
    with Client("http://ascob:8081", token) as ascob:        # or ASCOB_URL / ASCOB_TOKEN
        run_id = ascob.submit(spec, idempotency_key="portal-req-123")
        final = ascob.wait(run_id, timeout=3600)
        print(final.status, ascob.output(run_id).text)

Errors (the server's status and message, as it said them)::

    ClientError
    ├── ApiError             the server answered with an error: .status, .message
    │   ├── InvalidRequest   400, 413, 415 (an invalid spec says why)
    │   ├── AuthError        401, 403
    │   ├── NotFound         404
    │   ├── Conflict         409 (an Idempotency-Key reused with another spec, ...)
    │   └── ServerError      5xx
    ├── ConnectionFailed     no answer (refused, timed out)
    └── WaitTimeout          wait() or follow() ran out of time

Idempotent calls (reads, stop, and a submission with an ``idempotency_key``) are retried on
connection errors and 503, with a short backoff; other calls never are (a retried submission
without a key could create two runs).

Each public method is written once as a :class:`_Call` (what to send, how to read the answer) and
carried out by the sync or the async client: the two expose the same methods.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx

from ascob_api.wire import (
    AuditEntry,
    CallbackView,
    JobSpec,
    RunInfo,
    TokenInfo,
)
from ascob_flows.clock import wire_time
from ascob_flows.status import RunStatus

__all__ = [
    "ApiError",
    "AsyncClient",
    "AuthError",
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "Event",
    "InvalidRequest",
    "JobSpec",
    "NotFound",
    "Output",
    "RunInfo",
    "ServerError",
    "WaitTimeout",
]

T = TypeVar("T")

RETRIES = 3
RETRY_DELAY = 0.5


class ClientError(Exception):
    """Base of the client's errors."""


class ApiError(ClientError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class InvalidRequest(ApiError):
    pass


class AuthError(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class ServerError(ApiError):
    pass


class ConnectionFailed(ClientError):
    pass


class WaitTimeout(ClientError):
    pass


def _error_for(response: httpx.Response) -> ApiError:
    try:
        message = str(response.json().get("error") or response.text)
    except ValueError:
        message = response.text or response.reason_phrase
    status = response.status_code
    kind: type[ApiError] = ApiError
    if status in (400, 413, 415):
        kind = InvalidRequest
    elif status in (401, 403):
        kind = AuthError
    elif status == 404:
        kind = NotFound
    elif status == 409:
        kind = Conflict
    elif status >= 500:
        kind = ServerError
    return kind(status, message)


@dataclass(frozen=True)
class Output:
    """A piece of a run's output: ``text`` from the offset asked, the offset to ask next, and
    whether more may come."""

    text: str
    next_offset: int
    more: bool


@dataclass(frozen=True)
class Event:
    """What :meth:`Client.follow` yields: ``kind`` is ``status`` (``run`` set), ``output``
    (``line`` set) or ``end`` (``run`` set, the final RunInfo)."""

    kind: str
    run: RunInfo | None = None
    line: str | None = None


@dataclass
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = True


def _run_info(r: httpx.Response) -> RunInfo:
    return RunInfo.model_validate(r.json())


def _run_id(r: httpx.Response) -> int:
    return int(r.json()["runId"])


def _json(r: httpx.Response) -> Any:
    return r.json()


def _output(r: httpx.Response) -> Output:
    return Output(
        r.text,
        int(r.headers.get("X-Ascob-Next-Offset", "0")),
        r.headers.get("X-Ascob-More", "false") == "true",
    )


def _time(value: datetime | str | None) -> str | None:
    return value if isinstance(value, str) or value is None else wire_time(value)


class _Api:
    """What each call sends, for both clients."""

    def __init__(self, url: str | None, token: str | None) -> None:
        self.url = (url or os.environ.get("ASCOB_URL") or "").rstrip("/")
        self.token = token or os.environ.get("ASCOB_TOKEN")
        if not self.url:
            raise ClientError("no ASCOB URL: pass url= or set ASCOB_URL")
        if not self.token:
            raise ClientError("no ASCOB token: pass token= or set ASCOB_TOKEN")

    def _headers(self) -> dict[str, str]:
        return {"X-Api-Token": self.token or "", "User-Agent": "ascob-client"}

    # -------------------------------------------------------------- runs

    @staticmethod
    def _submit(spec: JobSpec | Mapping[str, Any], idempotency_key: str | None) -> _Call[int]:
        body = spec.wire() if isinstance(spec, JobSpec) else JobSpec.model_validate(spec).wire()
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return _Call(
            "POST",
            "/api/runs",
            _run_id,
            json={"jobSpec": body},
            headers=headers,
            idempotent=idempotency_key is not None,
        )

    @staticmethod
    def _get(run_id: int) -> _Call[RunInfo]:
        return _Call("GET", f"/api/runs/{run_id}", _run_info)

    @staticmethod
    def _refresh(run_id: int) -> _Call[RunInfo]:
        return _Call("GET", f"/api/runs/{run_id}/refresh", _run_info)

    @staticmethod
    def _stop(run_id: int, force: bool) -> _Call[RunInfo]:
        params = {"force": "true"} if force else None
        return _Call("DELETE", f"/api/runs/{run_id}", _run_info, params=params)

    @staticmethod
    def _start(run_id: int) -> _Call[RunInfo]:
        return _Call("GET", f"/api/runs/{run_id}/start", _run_info, idempotent=False)

    @staticmethod
    def _resubmit(run_id: int, submitter: str) -> _Call[int]:
        params = {"submitter": submitter}
        return _Call("GET", f"/api/runs/{run_id}/resubmit", _run_id, params, idempotent=False)

    @staticmethod
    def _upload(run_id: int, file_id: str, data: bytes) -> _Call[Any]:
        return _Call(
            "POST",
            f"/api/runs/{run_id}/files/{file_id}",
            _json,
            content=data,
            headers={"content-type": "application/octet-stream"},
        )

    @staticmethod
    def _output(run_id: int, offset: int) -> _Call[Output]:
        params = {"offset": offset} if offset else None
        return _Call("GET", f"/api/runs/{run_id}/output.txt", _output, params=params)

    @staticmethod
    def _search_page(
        submitter: str | None,
        statuses: list[str] | None,
        after: datetime | str | None,
        before: datetime | str | None,
        limit: int,
    ) -> _Call[list[RunInfo]]:
        body: dict[str, Any] = {"maxResults": limit}
        if submitter:
            body["submitterFilter"] = submitter
        if statuses:
            body["statusFilter"] = [RunStatus.parse(s).value for s in statuses]
        if after is not None:
            body["createdAfterFilter"] = _time(after)
        if before is not None:
            body["createdBeforeFilter"] = _time(before)
        return _Call(
            "POST",
            "/api/search/runs",
            lambda r: [RunInfo.model_validate(i) for i in r.json()["items"]],
            json=body,
        )

    @staticmethod
    def _audit(run_id: int | None) -> _Call[list[AuditEntry]]:
        path = f"/api/runs/{run_id}/audit" if run_id is not None else "/api/audit"
        return _Call(
            "GET", path, lambda r: [AuditEntry.model_validate(i) for i in r.json()["items"]]
        )

    @staticmethod
    def _callbacks(run_id: int) -> _Call[list[CallbackView]]:
        return _Call(
            "GET",
            f"/api/runs/{run_id}/callbacks",
            lambda r: [CallbackView.model_validate(i) for i in r.json()["items"]],
        )

    # -------------------------------------------------------------- the rest

    @staticmethod
    def _locks() -> _Call[Any]:
        return _Call("GET", "/api/locks", _json)

    @staticmethod
    def _backends() -> _Call[Any]:
        return _Call("GET", "/api/backends", _json)

    @staticmethod
    def _whoami() -> _Call[Any]:
        return _Call("GET", "/api/security/whoami", _json)

    @staticmethod
    def _tokens() -> _Call[list[TokenInfo]]:
        return _Call(
            "GET",
            "/api/security/tokens",
            lambda r: [TokenInfo.model_validate(i) for i in r.json()["items"]],
        )

    @staticmethod
    def _create_token(identifier: str, permissions: list[str], expiry: int) -> _Call[str]:
        return _Call(
            "POST",
            f"/api/security/tokens/{identifier}",
            lambda r: str(r.json()["secret"]),
            json={"permissions": permissions, "expirySeconds": expiry},
            idempotent=False,
        )

    @staticmethod
    def _revoke_token(identifier: str) -> _Call[Any]:
        return _Call("DELETE", f"/api/security/tokens/{identifier}", _json)

    @staticmethod
    def _check(call: _Call[T], response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise _error_for(response)
        return call.parse(response)


def _retryable(call: _Call[Any], attempt: int, response: httpx.Response | None) -> bool:
    if not call.idempotent or attempt + 1 >= RETRIES:
        return False
    return response is None or response.status_code == 503


class _SseParser:
    """Server-sent events, line by line; remembers the last event id (to resume after it)."""

    def __init__(self) -> None:
        self.kind = ""
        self.last_id = ""

    def feed(self, line: str) -> Event | None:
        if line.startswith("event:"):
            self.kind = line[6:].strip()
        elif line.startswith("id:"):
            self.last_id = line[3:].strip()
        elif line.startswith("data:"):
            data = line[5:]
            data = data[1:] if data.startswith(" ") else data
            if self.kind == "output":
                return Event("output", line=data)
            return Event(self.kind, run=RunInfo.model_validate(json.loads(data)))
        return None

    def resume_headers(self) -> dict[str, str]:
        return {"Last-Event-ID": self.last_id} if self.last_id else {}


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
