"""Strict input: unknown fields, content types, sizes, ids and text that would have been 500s."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.unit.conftest import DUMMY, submit

BIG = 2**63


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/runs", {"jobSpec": {"labels": DUMMY, "submiter": "x"}}, "submiter"),
        ("/api/runs", {"jobspec": {"labels": DUMMY}}, "jobspec"),
        ("/api/search/runs", {"submitter": "carol"}, "submitter"),
        ("/api/security/tokens/t1", {"permissions": [], "expiry": 5}, "expiry"),
    ],
)
def test_an_unknown_field_is_a_400_that_names_it_and_the_accepted_ones(
    api: TestClient, path: str, body: dict[str, object], field: str
) -> None:
    r = api.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert field in error and "accepted fields" in error


def test_a_misspelt_search_filter_does_not_return_every_run(api: TestClient) -> None:
    submit(api, submitter="alice")
    r = api.post("/api/search/runs", json={"submitter": "carol"})
    assert r.status_code == 400
    assert "submitterFilter" in r.json()["error"]


def test_an_unknown_field_in_a_webhook_report(api: TestClient, services: object) -> None:
    run_id = submit(api, description="w")
    hook = services.repo.get_run(run_id).webhook_id  # type: ignore[attr-defined]
    r = api.post(f"/api/webhooks/runs/{hook}", json={"state": "RUNNING"})
    assert r.status_code == 400 and "identificationKeys, status" in r.json()["error"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_without_json_content_type_is_refused_with_a_message(
    api: TestClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = api.post("/api/runs", content=b'{"jobSpec": {}}', headers=headers)
    assert r.status_code == 415, r.text
    assert "content-type: application/json" in r.json()["error"]


def test_a_body_over_the_limit_is_413_with_or_without_content_length(api: TestClient) -> None:
    huge = b'{"jobSpec": {"description": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    r = api.post("/api/runs", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks() -> Iterator[bytes]:
        yield b'{"jobSpec": {"description": "'
        for _ in range(64):
            yield b"y" * 65536
        yield b'"}}'

    r = api.post("/api/runs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_oversized_text_fields_are_refused(api: TestClient) -> None:
    for spec in (
        {"labels": DUMMY, "description": "d" * 100_000},
        {"labels": DUMMY, "submitter": "s" * 10_000},
        {"labels": DUMMY, "locks": [{"key": "k" * 300}]},
    ):
        r = api.post("/api/runs", json={"jobSpec": spec})
        assert r.status_code == 400, spec


def test_a_lone_surrogate_is_a_400(api: TestClient) -> None:
    body = b'{"jobSpec": {"labels": {"_execution_backend_id": "dummyBackend"}, '
    body += b'"description": "\\ud800"}}'
    r = api.post("/api/runs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Unicode" in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("GET", "/refresh"),
        ("GET", "/start"),
        ("DELETE", ""),
        ("GET", "/resubmit?submitter=x"),
        ("GET", "/output.txt"),
        ("GET", "/events"),
    ],
)
def test_a_run_id_beyond_64_bits_is_a_clear_4xx(api: TestClient, method: str, suffix: str) -> None:
    r = api.request(method, f"/api/runs/{BIG}{suffix}")
    assert 400 <= r.status_code < 500, r.text
    r = api.request(method, f"/api/runs/{BIG - 1}{suffix}")
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("expiry", [10**12, BIG, -1])
def test_token_expiry_is_bounded(api: TestClient, expiry: int) -> None:
    r = api.post("/api/security/tokens/t-exp", json={"permissions": [], "expirySeconds": expiry})
    assert r.status_code == 400, r.text


def test_a_token_identifier_cannot_end_in_a_newline(api: TestClient) -> None:
    r = api.post("/api/security/tokens/abc%0A", json={"permissions": ["job_run_read"]})
    assert r.status_code == 400
    ok = api.post("/api/security/tokens/abc", json={"permissions": ["job_run_read"]})
    assert ok.status_code == 200


def test_the_api_docs_work_offline(api: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = api.get(page).text
        assert "http://" not in html and "https://" not in html, page
        for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert api.get(asset).status_code == 200, asset
    assert api.get("/openapi.json").json()["info"]["title"] == "ASCOB API"
    assert api.get("/openapi.yaml").status_code == 200
