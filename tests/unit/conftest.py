"""The fast layer: the API in-process (FastAPI TestClient) over a repository in a temporary
SQLite file, the SQL lock store, and the backends the registry finds. No Prefect server, no etcd,
no subprocess: the whole layer runs in seconds (``pytest tests/unit``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ascob_api.db import create_schema, make_engine
from ascob_api.main import create_app
from ascob_api.repository import Repository
from ascob_api.service import Services
from ascob_api.settings import Settings
from ascob_flows.locks.sql import SqlLockStore
from backends import BackendRegistry

ROOT = "rootToken"
WEBHOOK = "webhookToken"
DUMMY = {"_execution_backend_id": "dummyBackend"}


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(
        home=tmp_path, root_token=ROOT, webhook_tokens=[WEBHOOK], job_manager_tokens=[]
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'ascob.db'}")
    create_schema(engine)
    repo = Repository(engine)
    made = Services(
        settings=settings,
        repo=repo,
        backends=BackendRegistry.load(tmp_path / "backends"),
        locks=SqlLockStore(engine, lease_seconds=30, poll_seconds=0.1),
    )
    yield made
    engine.dispose()


@pytest.fixture
def api(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services), headers={"X-Api-Token": ROOT}) as client:
        yield client


def submit(api: TestClient, **spec: Any) -> int:
    spec.setdefault("labels", DUMMY)
    r = api.post("/api/runs", json={"jobSpec": spec})
    assert r.status_code == 200, r.text
    return int(r.json()["runId"])
