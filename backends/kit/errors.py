"""The one error pair of the kit's API clients, and what those errors mean to ASCOB.

What a call of a kit client (:class:`backends.kit.ApiClient`) raises::

    SystemHTTPError       the system answered with an error status (its own words kept)
    SystemProtocolError   it answered something its API does not document (malformed JSON, ...)
    httpx.HTTPError       no answer (connection refused, timeout, ...)

Both kit errors carry ``system`` (``"rundeck"``, ``"gitlab"``, ...), so one pair serves every
backend. Two context managers say what such an error means, once for every backend:

- :func:`before_sending`: a call before the job was sent (nothing ran). A 5xx or no answer may
  pass (``BackendUnavailable``: ASCOB sends the job again for ASCOB_DISPATCH_RETRY_SECONDS),
  anything else is a refusal (``SubmitRefused``).
- :func:`following`: a call that follows a job already sent. The job is gone
  (``JobNotFound``) on a 404; any other failure may pass (``BackendUnavailable``: polling goes on).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

import httpx

from backends.base import BackendError, BackendUnavailable, JobNotFound, SubmitRefused

__all__ = [
    "CALL_ERRORS",
    "SystemHTTPError",
    "SystemProtocolError",
    "before_sending",
    "describe",
    "following",
    "may_have_arrived",
    "not_sent",
]


class SystemHTTPError(Exception):
    """The system answered with an error status: ``status_code``, its ``message`` (and the
    ``reason`` word some APIs add, such as Kubernetes' ``AlreadyExists``)."""

    def __init__(self, system: str, status_code: int, message: str, reason: str = "") -> None:
        head = f"HTTP {status_code} {reason}" if reason else f"HTTP {status_code}"
        super().__init__(f"{head}: {message}")
        self.system = system
        self.status_code = status_code
        self.message = message
        self.reason = reason


class SystemProtocolError(Exception):
    """The system answered something its API does not document."""

    def __init__(self, system: str, message: str) -> None:
        super().__init__(message)
        self.system = system


# everything a kit client's call may raise
CALL_ERRORS: tuple[type[Exception], ...] = (SystemHTTPError, SystemProtocolError, httpx.HTTPError)


def describe(exc: BaseException) -> str:
    """A failure in a few words, also when the exception has no message."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def may_have_arrived(exc: BaseException) -> bool:
    """Whether a failed call may have reached the system (a refused connection, a connect timeout
    or no free connection did not)."""
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def not_sent(exc: Exception, message: str) -> BackendError:
    """A call before the job was sent failed: ``BackendUnavailable`` when it may pass (a 5xx, no
    answer, no connection; ASCOB sends the job again for ASCOB_DISPATCH_RETRY_SECONDS),
    ``SubmitRefused`` otherwise. Raise it ``from exc``."""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, httpx.TransportError) or (isinstance(status, int) and status >= 500):
        return BackendUnavailable(message)
    return SubmitRefused(message)


@contextmanager
def before_sending(
    where: str,
    reading: str,
    missing: str | None = None,
    also: tuple[type[Exception], ...] = (),
) -> Iterator[None]:
    """Errors of the calls made before the job is sent (nothing has run): :func:`not_sent`
    decides. ``missing``: what a 404 means (a refusal saying so); ``reading``: what was read, for
    a failure without an answer; ``also``: more exceptions read as a broken answer."""
    broken: tuple[type[Exception], ...] = (SystemProtocolError, httpx.HTTPError, *also)
    try:
        yield
    except SystemHTTPError as exc:
        if missing is not None and exc.status_code == 404:
            raise SubmitRefused(f"{where}: {missing} ({exc.message})") from exc
        raise not_sent(exc, f"{where}: {exc}") from exc
    except broken as exc:
        raise not_sent(exc, f"{where}: cannot read {reading} ({describe(exc)})") from exc


@contextmanager
def following(
    what: str,
    missing: Collection[int] = (404,),
    also: tuple[type[Exception], ...] = (),
) -> Iterator[None]:
    """Errors of the calls that follow a job (status, output, stop): an answer in ``missing``
    means the job is not there (``JobNotFound``); any other failure may pass
    (``BackendUnavailable``). ``also``: more exceptions read as a broken answer."""
    broken: tuple[type[Exception], ...] = (SystemProtocolError, httpx.HTTPError, *also)
    try:
        yield
    except SystemHTTPError as exc:
        if exc.status_code in missing:
            raise JobNotFound(f"{what}: {exc}") from exc
        raise BackendUnavailable(f"{what}: {exc}") from exc
    except broken as exc:
        raise BackendUnavailable(f"{what}: {describe(exc)}") from exc
