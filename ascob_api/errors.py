"""The API's error tree; each maps to one HTTP status in :mod:`ascob_api.main`.

::

    AscobError
    ├── BadRequest        400  invalid spec, bad input, wrong state for the operation
    ├── Unauthorized      401  missing, unknown or expired token
    ├── Forbidden         403  valid token without the permission
    ├── NotFound          404  unknown run, file, webhook or token
    └── BackendFailed     502  the backend did not answer a request made on the caller's behalf
"""

from __future__ import annotations


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


class BackendFailed(AscobError):
    status_code = 502
