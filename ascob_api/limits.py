"""Request bodies: size limits and content types, checked before any handler reads a byte.

An ASGI middleware, so a body over the limit is refused with 413 while it arrives, also when the
client sends no Content-Length (chunked): ASCOB reads at most the limit plus one byte of it. A
non-empty body on a JSON route must say ``content-type: application/json`` (415 otherwise, with a
message saying so, as the original service did). File uploads are raw bytes, limited by
``ASCOB_MAX_FILE_BYTES``; every other body by ``ASCOB_MAX_REQUEST_BYTES``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_UPLOAD = re.compile(r"^/api/runs/[^/]+/files/[^/]+$")
_JSON_ROUTES = re.compile(r"^/api/(runs|search/runs|webhooks/runs/[^/]+|security/tokens/[^/]+)$")
_JSON = re.compile(r"^application/([\w.+-]+\+)?json\s*(;.*)?$", re.IGNORECASE)


class BodyTooLarge(Exception):
    pass


class RequestLimits:
    """Refuses bodies over the limit (413) and non-JSON bodies on JSON routes (415)."""

    def __init__(self, app: ASGIApp, max_request_bytes: int, max_file_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_file_bytes = max_file_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        upload = bool(_UPLOAD.match(scope["path"]))
        limit = self.max_file_bytes if upload else self.max_request_bytes
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, 413, f"the request body is {declared} bytes; the limit is {limit}")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, 413, f"the request body is over the limit of {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = headers.get("content-type", "")
        if body and _JSON_ROUTES.match(scope["path"]) and not _JSON.match(content_type):
            sent = f"content-type {content_type!r}" if content_type else "no content-type"
            await _refuse(
                send,
                415,
                f"the body must be JSON sent with content-type: application/json ({sent} given)",
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int, message: str) -> None:
    payload = json.dumps({"status": status, "error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
