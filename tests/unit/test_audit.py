"""The audit trail: every action on a run or a token records who did it, never a secret."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ascob_api.service import Services
from ascob_flows.machine import BEGIN_DISPATCH, READY_TO_DISPATCH, RECORD_SUBMISSION
from tests.unit.conftest import ROOT, WEBHOOK, submit


def actions(api: TestClient, run_id: int) -> list[tuple[str, str]]:
    items = api.get(f"/api/runs/{run_id}/audit").json()["items"]
    return [(i["actor"], i["action"]) for i in reversed(items)]


def test_actions_on_a_run_name_their_actor(services: Services, api: TestClient) -> None:
    secret = api.post(
        "/api/security/tokens/portal-a", json={"permissions": ["job_submit", "job_run_abort"]}
    ).json()["secret"]
    portal = {"X-Api-Token": secret}
    run_id = api.post(
        "/api/runs",
        json={
            "jobSpec": {"labels": {"_execution_backend_id": "dummyBackend"}, "manualStart": False}
        },
        headers=portal,
    ).json()["runId"]
    manual = submit(api, description="m", manualStart=True)
    api.post(f"/api/runs/{manual}/files/in.txt", content=b"data")
    api.get(f"/api/runs/{manual}/start")
    api.get(f"/api/runs/{manual}/resubmit", params={"submitter": "bob"})
    services.repo.apply(manual, READY_TO_DISPATCH)
    services.repo.apply(manual, BEGIN_DISPATCH)
    services.repo.apply(manual, RECORD_SUBMISSION, keys=lambda k: {"dummyJobId": "j"})
    hook = services.repo.get_run(manual).webhook_id
    api.post(
        f"/api/webhooks/runs/{hook}",
        json={"status": "RUNNING", "identificationKeys": {"build": "7"}},
        headers={"X-Api-Token": WEBHOOK},
    )
    api.delete(f"/api/runs/{run_id}", headers=portal)
    assert actions(api, run_id) == [("portal-a", "submit"), ("portal-a", "stop")]
    assert actions(api, manual) == [
        ("root", "submit"),
        ("root", "upload"),
        ("root", "start"),
        ("webhook-1", "webhook_keys"),
        ("webhook-1", "webhook_status"),
    ]
    resubmits = api.get("/api/audit", params={"action": "resubmit"}).json()["items"]
    assert resubmits[0]["details"]["source"] == manual and resubmits[0]["actor"] == "root"
    everything = api.get("/api/audit").text
    assert secret not in everything and ROOT not in everything and WEBHOOK not in everything


def test_tokens_are_listed_without_secrets_and_their_changes_audited(api: TestClient) -> None:
    secret = api.post(
        "/api/security/tokens/ci-bot", json={"permissions": ["job_run_read"], "expirySeconds": 60}
    ).json()["secret"]
    listed = api.get("/api/security/tokens").json()["items"]
    assert [t["identifier"] for t in listed] == ["ci-bot"]
    assert listed[0]["permissions"] == ["job_run_read"] and listed[0]["expiresAt"]
    assert secret not in api.get("/api/security/tokens").text
    me = api.get("/api/security/whoami", headers={"X-Api-Token": secret}).json()
    assert me["identifier"] == "ci-bot"
    api.delete("/api/security/tokens/ci-bot")
    done = api.get("/api/audit", params={"actor": "root"}).json()["items"]
    assert [(e["action"], e["target"]) for e in done[:2]] == [
        ("token_revoke", "ci-bot"),
        ("token_create", "ci-bot"),
    ]


def test_reading_the_audit_needs_its_permission(api: TestClient) -> None:
    secret = api.post("/api/security/tokens/reader", json={"permissions": ["job_run_read"]}).json()[
        "secret"
    ]
    r = api.get("/api/audit", headers={"X-Api-Token": secret})
    assert r.status_code == 403 and "audit_read" in r.json()["error"]
    assert api.get("/api/audit", params={"after": "yesterday"}).status_code == 400
    assert api.get("/api/audit", params={"acter": "root"}).status_code == 400
