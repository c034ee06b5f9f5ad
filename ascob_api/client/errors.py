"""The client's errors: the server's answer as it said it, or no answer at all."""

from __future__ import annotations

import httpx


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
