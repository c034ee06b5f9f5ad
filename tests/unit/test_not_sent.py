"""What a failure before a job was sent means (backends.kit.not_sent): a 5xx or no answer may
pass, and ASCOB sends the job again; anything else is a refusal."""

from __future__ import annotations

import httpx
import pytest

from backends import BackendUnavailable, SubmitRefused
from backends.kit import not_sent


class HTTPError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (HTTPError(503), BackendUnavailable),
        (HTTPError(500), BackendUnavailable),
        (HTTPError(404), SubmitRefused),
        (HTTPError(401), SubmitRefused),
        (httpx.ConnectError("refused"), BackendUnavailable),
        (httpx.ReadTimeout("slow"), BackendUnavailable),
        (httpx.RemoteProtocolError("cut"), BackendUnavailable),
        (ValueError("malformed JSON"), SubmitRefused),
    ],
)
def test_a_failure_before_the_job_was_sent(exc: Exception, kind: type[Exception]) -> None:
    error = not_sent(exc, f"acme: {exc}")
    assert type(error) is kind and str(error) == f"acme: {exc}"
