"""The API against its own OpenAPI document, property-based (schemathesis): no server error, and
every answer (status, content type, body) is one the document declares.

Bounded: ``ASCOB_CONFORMANCE_EXAMPLES`` examples per operation (default 30); pytest's
``--hypothesis-show-statistics`` prints how many were run per operation."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from ascob_api.db import create_schema, make_engine
from ascob_api.main import create_app
from ascob_api.repository import Repository
from ascob_api.service import Services
from ascob_api.settings import Settings
from ascob_api.wire import RunInfo
from ascob_flows.locks.sql import SqlLockStore
from ascob_flows.status import RunStatus
from backends import BackendRegistry
from tests.unit.conftest import ROOT, submit

EXAMPLES = int(os.environ.get("ASCOB_CONFORMANCE_EXAMPLES", "30"))


# schemathesis reads the document when this module is imported, so the app (and its home) is
# made then; the home is removed when the module's tests are done, or when the interpreter
# exits if they never ran (a deselected module): TemporaryDirectory's own finalizer
_HOME = tempfile.TemporaryDirectory(prefix="ascob-conformance-")
_ENGINE = make_engine(f"sqlite:///{Path(_HOME.name) / 'ascob.db'}")


@pytest.fixture(scope="module", autouse=True)
def _remove_home() -> Iterator[None]:
    yield
    _ENGINE.dispose()
    _HOME.cleanup()


def _app() -> object:
    home, engine = Path(_HOME.name), _ENGINE
    create_schema(engine)
    services = Services(
        # bodies over the limit are 413 (tested in test_api_input.py); here every generated body
        # reaches validation, which schemathesis's negative checks expect to answer 400
        settings=Settings(
            home=home,
            root_token=ROOT,
            webhook_tokens=[],
            job_manager_tokens=[],
            max_request_bytes=64 * 1024 * 1024,
        ),
        repo=Repository(engine),
        backends=BackendRegistry.load(home / "backends"),
        locks=SqlLockStore(engine),
    )
    return create_app(services)


_APP = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_api_answers_as_its_document_says(case: schemathesis.Case) -> None:
    if case.path.endswith("/events"):
        case.query = {**(case.query or {}), "interval": 0.05}
    # every check but "schema-valid data is accepted": a valid shape may still break a business
    # rule the document cannot express (no backend takes these labels: 400, documented)
    excluded = [positive_data_acceptance]
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        # its negative part may be the token, which the request below sends anyway: what it
        # sends is not the negative case schemathesis generated
        excluded.append(negative_data_rejection)
    case.call_and_validate(headers={"X-Api-Token": ROOT}, excluded_checks=excluded)


def test_run_info_is_typed_in_the_document() -> None:
    """A generated client gets RunInfo's fields (by their wire names), not an empty object."""
    with TestClient(_APP) as client:  # type: ignore[arg-type]
        doc = client.get("/openapi.json").json()
    run_info = doc["components"]["schemas"]["RunInfo"]
    assert run_info.get("additionalProperties") is not True
    sent = set(RunInfo(id=1, status=RunStatus.DEFINED).model_dump(by_alias=True, mode="json"))
    assert set(run_info["properties"]) == sent | {"waitingFor"}
    # every original field is always sent (null included); waitingFor only while waiting
    assert set(run_info["required"]) == sent
    for path, op in (
        ("/api/runs/{runId}", "get"),
        ("/api/runs/{runId}", "delete"),
        ("/api/runs/{runId}/refresh", "post"),
        ("/api/runs/{runId}/start", "post"),
        ("/api/webhooks/runs/{webhookId}", "post"),
    ):
        answer = doc["paths"][path][op]["responses"]["200"]["content"]["application/json"]
        assert answer["schema"] == {"$ref": "#/components/schemas/RunInfo"}, (path, op)
    items = doc["components"]["schemas"]["SearchRunResponse"]["properties"]["items"]
    assert items["items"] == {"$ref": "#/components/schemas/RunInfo"}


def test_real_run_answers_match_the_typed_run_info() -> None:
    """The answers that carry a RunInfo, for runs that exist, validate against the document
    (every check, the response schema included): the typed schema says what is sent."""
    with TestClient(_APP, headers={"X-Api-Token": ROOT}) as client:  # type: ignore[arg-type]
        run_ids = [submit(client, description="conformance"), submit(client, manualStart=True)]
        # runs that need a lock (held by the first: the second waits for it once dispatched)
        holder = submit(client, locks=[{"key": "conformance-lock"}])
        waiter = submit(client, locks=[{"key": "conformance-lock"}])
    checked = 0
    for run_id in [*run_ids, holder, waiter]:
        for path, method in (
            ("/api/runs/{runId}", "GET"),
            ("/api/runs/{runId}/refresh", "POST"),
            ("/api/runs/{runId}/refresh", "GET"),
        ):
            case = schema[path][method].Case(path_parameters={"runId": run_id})
            response = case.call_and_validate(headers={"X-Api-Token": ROOT})
            assert response.status_code == 200, response.text
            checked += 1
    search = schema["/api/search/runs"]["POST"].Case(body={})
    response = search.call_and_validate(headers={"X-Api-Token": ROOT})
    assert len(response.json()["items"]) >= 4, response.text
    assert checked == 12


OPERATION_IDS = {
    ("post", "/api/runs"): "submitRun",
    ("get", "/api/runs/{runId}"): "getRun",
    ("delete", "/api/runs/{runId}"): "stopRun",
    ("post", "/api/runs/{runId}/refresh"): "refreshRun",
    ("get", "/api/runs/{runId}/refresh"): "getRefreshRun",
    ("post", "/api/runs/{runId}/start"): "startRun",
    ("get", "/api/runs/{runId}/start"): "getStartRun",
    ("post", "/api/runs/{runId}/resubmit"): "resubmitRun",
    ("get", "/api/runs/{runId}/resubmit"): "getResubmitRun",
    ("get", "/api/runs/{runId}/output.txt"): "getRunOutput",
    ("post", "/api/runs/{runId}/files/{fileId}"): "uploadRunFile",
    ("get", "/api/runs/{runId}/callbacks"): "listRunCallbacks",
    ("post", "/api/runs/{runId}/events/ticket"): "createEventsTicket",
    ("get", "/api/runs/{runId}/events"): "streamRunEvents",
    ("post", "/api/search/runs"): "searchRuns",
    ("post", "/api/webhooks/runs/{webhookId}"): "webhookUpdateRun",
    ("get", "/api/webhooks/runs/{webhookId}/files/{fileId}"): "webhookGetFile",
    ("get", "/api/security/whoami"): "whoAmI",
    ("get", "/api/security/tokens"): "listTokens",
    ("post", "/api/security/tokens/{identifier}"): "createToken",
    ("delete", "/api/security/tokens/{identifier}"): "deleteToken",
    ("get", "/api/backends"): "listBackends",
    ("get", "/api/locks"): "listLocks",
    ("get", "/api/audit"): "searchAudit",
    ("get", "/api/runs/{runId}/audit"): "getRunAudit",
    ("get", "/api/health"): "health",
}


def test_every_operation_has_a_short_unique_id_and_one_tag() -> None:
    """The ids become a generated client's method names: short, camelCase, one per operation
    (GET and POST twins differ), and each operation is filed under one resource."""
    with TestClient(_APP) as client:  # type: ignore[arg-type]
        doc = client.get("/openapi.json").json()
    found = {
        (method, path): op
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if method in {"get", "post", "put", "patch", "delete"}
    }
    ids = [op["operationId"] for op in found.values()]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert {key: found[key]["operationId"] for key in OPERATION_IDS if key in found} == (
        OPERATION_IDS
    )
    for key, op in found.items():
        assert op["operationId"].isidentifier() and "_" not in op["operationId"], key
        assert len(op.get("tags", [])) == 1, key
