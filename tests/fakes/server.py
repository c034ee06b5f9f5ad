"""Serve a Starlette app on 127.0.0.1 in a thread, or in-process (:class:`InProcess`), with
scriptable faults."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fault:
    """What the server does instead of (or after) answering a matching request.

    ``kind``: ``"500"``/``"502"``/``"503"`` answer that status without acting; ``"malformed"``
    answers 200 with broken JSON without acting; ``"hang"`` acts, then waits ``seconds`` before
    answering (the client times out first: for a trigger, the job *does* start).
    """

    method: str
    path: str  # a regex searched in the path
    kind: str
    times: int = 1
    seconds: float = 5.0


@dataclass
class FaultPlan:
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, path: str, kind: str, times: int = 1, seconds: float = 5.0) -> None:
        with self.lock:
            self.faults.append(Fault(method.upper(), path, kind, times, seconds))

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def take(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and re.search(fault.path, path) and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None


Handler = Callable[[Request], Awaitable[Response]]


async def apply_faults(plan: FaultPlan, request: Request, handler: Handler) -> Response:
    fault = plan.take(request.method, request.url.path)
    if fault is None:
        return await handler(request)
    if fault.kind.isdigit():
        return PlainTextResponse(f"fake: injected {fault.kind}", status_code=int(fault.kind))
    if fault.kind == "malformed":
        return Response('{"oops": ', media_type="application/json")
    if fault.kind == "hang":  # the request is carried out; only the answer is late
        response = await handler(request)
        await asyncio.sleep(fault.seconds)
        return response
    raise ValueError(f"unknown fault kind {fault.kind}")


class ServerThread:
    """uvicorn serving ``app`` on loopback from a daemon thread."""

    def __init__(self, app: Callable[..., Awaitable[None]], port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


class InProcess(httpx.AsyncBaseTransport):
    """The stand-ins' apps served in-process (httpx's ``ASGITransport``), no socket, as their
    servers would answer: a request to another address is refused (``ConnectError``), and the
    client's read timeout holds (``ASGITransport`` alone waits for any answer, however late: a
    ``hang`` fault would never time out). The servers need not be started."""

    def __init__(self, *servers: ServerThread) -> None:
        self._apps = {httpx.URL(s.url).netloc: httpx.ASGITransport(app=s.app) for s in servers}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        app = self._apps.get(request.url.netloc)
        if app is None:
            raise httpx.ConnectError("connection refused (no stand-in there)", request=request)
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            return await asyncio.wait_for(app.handle_async_request(request), timeout)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out (in-process stand-in)", request=request) from None
