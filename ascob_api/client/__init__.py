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

from ascob_api.client.aio import AsyncClient
from ascob_api.client.calls import Event, Output
from ascob_api.client.errors import (
    ApiError,
    AuthError,
    ClientError,
    Conflict,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    ServerError,
    WaitTimeout,
)
from ascob_api.client.sync import Client
from ascob_api.wire import JobSpec, RunInfo

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
