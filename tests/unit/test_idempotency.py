"""Idempotent submission: the same Idempotency-Key and body from the same token is one run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from httpx import Response

from ascob_api.service import Services
from tests.unit.conftest import DUMMY, WEBHOOK

SPEC = {"jobSpec": {"description": "deploy", "labels": DUMMY}}


def post(
    api: TestClient, key: str, body: dict[str, object] = SPEC, token: str | None = None
) -> Response:
    headers = {"Idempotency-Key": key}
    if token:
        headers["X-Api-Token"] = token
    return api.post("/api/runs", json=body, headers=headers)


def test_the_same_key_and_body_is_the_same_run(services: Services, api: TestClient) -> None:
    first = post(api, "k-1")
    assert first.status_code == 200 and first.headers["Idempotent-Replayed"] == "false"
    again = post(api, "k-1")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert services.repo.count_runs() == 1
    other = post(api, "k-2")
    assert other.json()["runId"] != first.json()["runId"]
    plain = api.post("/api/runs", json=SPEC)
    assert plain.headers["Idempotent-Replayed"] == "false"


def test_the_same_key_with_another_body_is_409_naming_the_first_run(api: TestClient) -> None:
    first = post(api, "k-3").json()["runId"]
    body = {"jobSpec": {"description": "something else", "labels": DUMMY}}
    r = post(api, "k-3", body)
    assert r.status_code == 409
    assert f"run {first}" in r.json()["error"]


def test_keys_are_per_token(services: Services, api: TestClient) -> None:
    created = api.post("/api/security/tokens/portal-b", json={"permissions": ["job_submit"]})
    other_token = created.json()["secret"]
    a = post(api, "shared").json()["runId"]
    b = post(api, "shared", token=other_token).json()["runId"]
    assert a != b


def test_a_race_of_requests_with_one_key_creates_one_run(
    services: Services, api: TestClient
) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(api, "race"), range(16)))
    assert {r.status_code for r in answers} == {200}
    assert len({r.json()["runId"] for r in answers}) == 1
    assert [r.headers["Idempotent-Replayed"] for r in answers].count("false") == 1
    assert services.repo.count_runs() == 1


def test_an_expired_key_makes_a_new_run(services: Services, api: TestClient) -> None:
    services.settings.idempotency_seconds = -1
    first = post(api, "old").json()["runId"]
    second = post(api, "old").json()["runId"]
    assert first != second


def test_a_bad_key_is_400(api: TestClient) -> None:
    assert post(api, "has space").status_code == 400
    assert post(api, "x" * 300).status_code == 400
    assert post(api, "w", token=WEBHOOK).status_code == 403  # may not submit at all
