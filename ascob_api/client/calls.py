"""Each public method written once as a :class:`_Call`, carried out by the sync or async client."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx

from ascob_api.client.errors import ClientError, _error_for
from ascob_api.wire import (
    AuditEntry,
    CallbackView,
    JobSpec,
    RunInfo,
    TokenInfo,
)
from ascob_flows.clock import wire_time
from ascob_flows.status import RunStatus

T = TypeVar("T")

RETRIES = 3
RETRY_DELAY = 0.5


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
