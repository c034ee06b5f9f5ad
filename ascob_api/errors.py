"""The API's error tree, and the one place where the engine's domain errors
(:mod:`ascob_flows.errors`) become HTTP statuses (:func:`http_status`, used by the exception
handlers of :mod:`ascob_api.main`).

::

    AscobError
    ├── BadRequest        400  invalid spec, bad input, wrong state for the operation
    ├── Unauthorized      401  missing, unknown or expired token; a refused bearer JWT
    ├── Forbidden         403  valid token without the permission
    ├── NotFound          404  unknown run, file, webhook or token
    ├── Conflict          409  an Idempotency-Key used before with another body
    ├── BackendFailed     502  the backend did not answer a request made on the caller's behalf
    └── KeysUnavailable   503  the identity provider's signing keys (JWKS) cannot be fetched

    ascob_flows.errors.RunNotFound         404
    ascob_api.repository.RecordNotFound    404  unknown file or token
    ascob_flows.errors.InvalidSpec         400
    ascob_flows.errors.AlreadyFinal        400  (as the original: stopping an ended run)
    ascob_flows.errors.NotDispatched       409  a job reported before ASCOB dispatched it
    ascob_flows.errors.WrongState          409
    ascob_flows.locks.LockStoreUnavailable 503
"""

from __future__ import annotations

from ascob_api.repository.base import RecordNotFound
from ascob_flows.errors import (
    AlreadyFinal,
    InvalidSpec,
    NotDispatched,
    RunError,
    RunNotFound,
    WrongState,
)
from ascob_flows.locks import LockStoreUnavailable

_DOMAIN: tuple[tuple[type[Exception], int], ...] = (
    (RunNotFound, 404),
    (RecordNotFound, 404),
    (InvalidSpec, 400),
    (AlreadyFinal, 400),
    (NotDispatched, 409),
    (WrongState, 409),
    (LockStoreUnavailable, 503),
)


def http_status(exc: Exception) -> int:
    """The HTTP status of an engine error (500 for an error this table does not know)."""
    for kind, status in _DOMAIN:
        if isinstance(exc, kind):
            return status
    return 500


def domain_message(exc: Exception) -> str:
    if isinstance(exc, RunError | RecordNotFound):
        return exc.message
    return f"the lock store does not answer: {exc}"


DOMAIN_ERRORS = (RunError, RecordNotFound, LockStoreUnavailable)


class AscobError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(AscobError):
    status_code = 400


class Unauthorized(AscobError):
    status_code = 401


class Forbidden(AscobError):
    status_code = 403


class NotFound(AscobError):
    status_code = 404


class Conflict(AscobError):
    status_code = 409


class BackendFailed(AscobError):
    status_code = 502


class KeysUnavailable(AscobError):
    """A bearer JWT cannot be checked now: the identity provider's keys cannot be fetched.
    A 503 (retry shortly), not a 401: the token may well be good."""

    status_code = 503
