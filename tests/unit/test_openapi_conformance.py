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
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from ascob_api.db import create_schema, make_engine
from ascob_api.main import create_app
from ascob_api.repository import Repository
from ascob_api.service import Services
from ascob_api.settings import Settings
from ascob_flows.locks.sql import SqlLockStore
from backends import BackendRegistry
from tests.unit.conftest import ROOT

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


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


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
