"""The REST contract of the original ASCOB, endpoint by endpoint, against ``ascob serve``."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.harness import JOB_MANAGER_TOKEN, ROOT_TOKEN, WEBHOOK_TOKEN, Ascob, wait_until

DUMMY = {"_execution_backend_id": "dummyBackend"}


def spec(**extra: Any) -> dict[str, Any]:
    labels = {**DUMMY, **extra.pop("labels", {})}
    return {"description": "dummy test", "submitter": "alice", "labels": labels, **extra}


def webhook_id_of(ascob: Ascob, run_id: int) -> str:
    """The webhook id is secret: the job learns it through %%WEBHOOKID%%; tests read the DB."""
    import sqlite3

    db = sqlite3.connect(ascob.home / "ascob.db")
    try:
        row = db.execute("select webhook_id from runs where id = ?", (run_id,)).fetchone()
    finally:
        db.close()
    return str(row[0])


# ---------------------------------------------------------------------- auth


PROTECTED = [
    ("POST", "/api/runs", {"jobSpec": spec()}),
    ("GET", "/api/runs/1", None),
    ("GET", "/api/runs/1/refresh", None),
    ("GET", "/api/runs/1/start", None),
    ("DELETE", "/api/runs/1", None),
    ("GET", "/api/runs/1/resubmit?submitter=bob", None),
    ("GET", "/api/runs/1/output.txt", None),
    ("POST", "/api/runs/1/files/input.txt", b"x"),
    ("POST", "/api/search/runs", {}),
    ("POST", "/api/webhooks/runs/abc", {"status": "RUNNING"}),
    ("GET", "/api/webhooks/runs/abc/files/input.txt", None),
    ("GET", "/api/security/whoami", None),
    ("POST", "/api/security/tokens/someone", {"permissions": []}),
    ("DELETE", "/api/security/tokens/someone", None),
]


def _call(ascob: Ascob, method: str, path: str, body: Any, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"X-Api-Token": token}
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(body, bytes):
        kwargs["content"] = body
    elif body is not None:
        kwargs["json"] = body
    return httpx.request(method, ascob.url + path, timeout=30, **kwargs)


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_missing_and_bad_tokens_are_refused(
    ascob: Ascob, method: str, path: str, body: Any
) -> None:
    for token in (None, "not-a-token"):
        r = _call(ascob, method, path, body, token)
        assert r.status_code == 401, (token, r.text)
        assert r.json()["status"] == 401 and r.json()["error"]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED[:11] + PROTECTED[12:])
def test_token_without_the_permission_is_refused(
    ascob: Ascob, method: str, path: str, body: Any
) -> None:
    # the webhook token has no job_* permission; the job manager no webhook_*/security_*
    token = JOB_MANAGER_TOKEN if "webhooks" in path or "security" in path else WEBHOOK_TOKEN
    r = _call(ascob, method, path, body, token)
    assert r.status_code == 403, r.text
    assert "lacks the permission" in r.json()["error"]


def test_whoami_lists_authorities(ascob: Ascob) -> None:
    r = _call(ascob, "GET", "/api/security/whoami", None, JOB_MANAGER_TOKEN)
    assert r.status_code == 200
    authorities = set(r.json()["authorities"])
    assert "job_submit" in authorities and "webhook_update_status" not in authorities
    root = set(_call(ascob, "GET", "/api/security/whoami", None, ROOT_TOKEN).json()["authorities"])
    assert "security_token_write" in root and "audit_read" in root and len(root) == 14


def test_created_token_works_is_scoped_expires_and_can_be_revoked(ascob: Ascob) -> None:
    r = ascob.http.post(
        "/api/security/tokens/portal-a",
        json={"permissions": ["job_run_read", "job_run_search"], "expirySeconds": 0},
    )
    assert r.status_code == 200, r.text
    secret = r.json()["secret"]
    assert _call(ascob, "POST", "/api/search/runs", {}, secret).status_code == 200
    assert _call(ascob, "POST", "/api/runs", {"jobSpec": spec()}, secret).status_code == 403
    who = _call(ascob, "GET", "/api/security/whoami", None, secret).json()["authorities"]
    assert sorted(who) == ["job_run_read", "job_run_search"]
    # stored hashed: the secret itself is nowhere in the database file
    assert secret.encode() not in (ascob.home / "ascob.db").read_bytes()
    assert ascob.http.delete("/api/security/tokens/portal-a").status_code == 200
    assert _call(ascob, "POST", "/api/search/runs", {}, secret).status_code == 401
    # expiry
    short = ascob.http.post(
        "/api/security/tokens/short", json={"permissions": ["job_run_read"], "expirySeconds": 1}
    ).json()
    assert _call(ascob, "GET", "/api/security/whoami", None, short["secret"]).status_code == 200
    time.sleep(1.5)
    assert _call(ascob, "GET", "/api/security/whoami", None, short["secret"]).status_code == 401


def test_token_with_unknown_permission_is_400(ascob: Ascob) -> None:
    r = ascob.http.post("/api/security/tokens/x", json={"permissions": ["job_fly"]})
    assert r.status_code == 400 and "job_fly" in r.json()["error"]
    assert ascob.http.delete("/api/security/tokens/nobody").status_code == 404


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "malformed JSON"),
        ({"jobSpec": {"labels": "nope"}}, "labels"),
        ({"jobSpec": {"labels": {"_execution_backend_id": "noSuchBackend"}}}, "noSuchBackend"),
        ({"jobSpec": {"description": "x", "labels": {}}}, "no backend accepts"),
        ({"jobSpec": {**spec(), "locks": [{"key": ""}]}}, "lock"),
        ({"jobSpec": {**spec(), "locks": [{"key": "k" * 257}]}}, "256"),
        ({"jobSpec": {**spec(description="%%NOPE%%"), "runtimeVariables": True}}, "%%NOPE%%"),
        ({"jobSpec": spec(labels={"duration": "soon"})}, "duration"),
        ({}, "jobSpec"),
    ],
)
def test_invalid_submissions_are_400_with_a_reason(ascob: Ascob, body: Any, needle: str) -> None:
    kwargs = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    r = ascob.http.post("/api/runs", **kwargs)
    assert r.status_code == 400, r.text
    assert r.json()["status"] == 400
    assert needle in r.json()["error"]


def test_unknown_and_non_numeric_run_ids(ascob: Ascob) -> None:
    r = ascob.http.get("/api/runs/999999")
    assert r.status_code == 404 and r.json() == {"status": 404, "error": "run 999999 not found"}
    r = ascob.http.get("/api/runs/abc")
    assert r.status_code == 400 and "runId" in r.json()["error"]
    assert (
        ascob.http.post("/api/search/runs", json={"statusFilter": ["WHATEVER"]}).status_code == 400
    )
    assert ascob.http.post("/api/webhooks/runs/unknown", json={}).status_code == 404
    assert ascob.http.get("/api/runs/999999/output.txt").status_code == 404


def test_openapi_json_yaml_and_docs(ascob: Ascob) -> None:
    doc = httpx.get(ascob.url + "/openapi.json").json()
    assert "/api/runs/{runId}/resubmit" in doc["paths"]
    assert "/api/webhooks/runs/{webhookId}" in doc["paths"]
    assert doc["paths"]["/api/runs"]["post"]["description"]
    y = httpx.get(ascob.url + "/openapi.yaml")
    assert y.status_code == 200 and "/api/search/runs:" in y.text
    assert "swagger" in httpx.get(ascob.url + "/docs").text.lower()


# ---------------------------------------------------------------------- runs


def test_submit_read_and_output(ascob: Ascob) -> None:
    run_id = ascob.submit(spec(labels={"output": "hello from the job"}), token=JOB_MANAGER_TOKEN)
    info = ascob.wait_status(run_id, "SUCCEDED")
    assert info["submitter"] == "alice" and info["description"] == "dummy test"
    assert info["definedTime"] <= info["submissionTime"] <= info["endTime"]
    r = ascob.http.get(f"/api/runs/{run_id}/output.txt")
    assert r.status_code == 200 and r.text == "hello from the job"
    assert r.headers["content-type"].startswith("text/plain")
    r = ascob.http.get(f"/api/runs/{run_id}/output.txt", params={"offset": 6})
    assert r.text == "from the job" and r.headers["x-ascob-more"] == "false"


def test_failed_and_refused_jobs(ascob: Ascob) -> None:
    failed = ascob.submit(spec(labels={"status": "FAILED"}))
    ascob.wait_status(failed, "FAILED")
    refused = ascob.submit(spec(labels={"fail": "true"}))
    ascob.wait_status(refused, "FAILED")
    out = ascob.http.get(f"/api/runs/{refused}/output.txt").text
    assert "refused" in out


def test_compatibility_dummy_in_description_selects_the_dummy_backend(ascob: Ascob) -> None:
    run_id = ascob.submit({"description": "a Dummy job"})
    ascob.wait_status(run_id, "SUCCEDED")


def test_runtime_variables_are_replaced(ascob: Ascob) -> None:
    run_id = ascob.submit(
        {
            "description": "dummy %%RUNID%% for %%SUBMITTER%%",
            "submitter": "carol",
            "labels": {**DUMMY, "output": "hook=%%WEBHOOKID%%"},
            "runtimeVariables": True,
        }
    )
    info = ascob.wait_status(run_id, "SUCCEDED")
    assert info["description"] == f"dummy {run_id} for carol"
    assert ascob.http.get(f"/api/runs/{run_id}/output.txt").text == (
        f"hook={webhook_id_of(ascob, run_id)}"
    )


def test_refresh_asks_the_backend(ascob: Ascob) -> None:
    run_id = ascob.submit(spec(labels={"status": "RUNNING"}))
    ascob.wait_status(run_id, "RUNNING")
    r = ascob.http.get(f"/api/runs/{run_id}/refresh")
    assert r.status_code == 200 and r.json()["status"] == "RUNNING"
    ascob.http.delete(f"/api/runs/{run_id}")
    ascob.wait_status(run_id, "ABORTED")


def test_stop_a_running_job_goes_aborting_then_aborted(ascob: Ascob) -> None:
    run_id = ascob.submit(spec(labels={"status": "RUNNING"}))
    ascob.wait_status(run_id, "RUNNING")
    r = ascob.http.delete(f"/api/runs/{run_id}", params={"force": "true"})
    assert r.status_code == 200 and r.json()["status"] in ("ABORTING", "ABORTED")
    info = ascob.wait_status(run_id, "ABORTED")
    assert info["endTime"]
    again = ascob.http.delete(f"/api/runs/{run_id}")
    assert again.status_code == 400 and "already ABORTED" in again.json()["error"]


def test_manual_start(ascob: Ascob) -> None:
    run_id = ascob.submit(spec(manualStart=True))
    time.sleep(2)
    assert ascob.run(run_id)["status"] == "DEFINED"
    # the job manager token has job_run_manual_start; the webhook token does not
    refused = httpx.post(
        ascob.url + "/api/runs",
        json={"jobSpec": spec(manualStart=True)},
        headers={"X-Api-Token": WEBHOOK_TOKEN},
    )
    assert refused.status_code == 403
    assert ascob.http.get(f"/api/runs/{run_id}/start").status_code == 200
    ascob.wait_status(run_id, "SUCCEDED")
    again = ascob.http.get(f"/api/runs/{run_id}/start")
    assert again.status_code == 400
    not_manual = ascob.submit(spec())
    assert ascob.http.get(f"/api/runs/{not_manual}/start").status_code == 400


def test_stop_before_dispatch_is_aborted_at_once(ascob: Ascob) -> None:
    run_id = ascob.submit(spec(manualStart=True))
    r = ascob.http.delete(f"/api/runs/{run_id}")
    assert r.status_code == 200 and r.json()["status"] == "ABORTED"
    assert ascob.http.get(f"/api/runs/{run_id}/start").status_code == 400


def test_files_upload_rules_and_webhook_download(ascob: Ascob) -> None:
    run_id = ascob.submit(spec(manualStart=True))
    up = ascob.http.post(f"/api/runs/{run_id}/files/input.txt", content=b"payload-1")
    assert up.status_code == 200, up.text
    bad = ascob.http.post(f"/api/runs/{run_id}/files/..%2Fetc", content=b"x")
    assert bad.status_code in (400, 404)
    bad = ascob.http.post(f"/api/runs/{run_id}/files/a b", content=b"x")
    assert bad.status_code == 400
    hook = webhook_id_of(ascob, run_id)
    got = httpx.get(
        f"{ascob.url}/api/webhooks/runs/{hook}/files/input.txt",
        headers={"X-Api-Token": WEBHOOK_TOKEN},
    )
    assert got.status_code == 200 and got.content == b"payload-1"
    missing = httpx.get(
        f"{ascob.url}/api/webhooks/runs/{hook}/files/other.txt",
        headers={"X-Api-Token": WEBHOOK_TOKEN},
    )
    assert missing.status_code == 404
    ascob.http.get(f"/api/runs/{run_id}/start")
    ascob.wait_status(run_id, "SUCCEDED")
    late = ascob.http.post(f"/api/runs/{run_id}/files/late.txt", content=b"x")
    assert late.status_code == 400 and "DEFINED" in late.json()["error"]
    assert ascob.http.post("/api/runs/424242/files/x.txt", content=b"x").status_code == 404


def test_file_size_limit(ascob: Ascob) -> None:
    run_id = ascob.submit(spec(manualStart=True))
    too_big = b"x" * (10 * 1024 * 1024 + 1)
    r = ascob.http.post(f"/api/runs/{run_id}/files/big.bin", content=too_big)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    ascob.http.delete(f"/api/runs/{run_id}")


def test_resubmit_copies_spec_new_submitter_root_parent_and_root_files(ascob: Ascob) -> None:
    root = ascob.submit(spec(manualStart=True, labels={"output": "same job"}))
    ascob.http.post(f"/api/runs/{root}/files/input.txt", content=b"root file")
    ascob.http.get(f"/api/runs/{root}/start")
    ascob.wait_status(root, "SUCCEDED")
    r = ascob.http.get(f"/api/runs/{root}/resubmit", params={"submitter": "bob"})
    assert r.status_code == 200, r.text
    child = r.json()["runId"]
    info = ascob.wait_status(child, "SUCCEDED")  # no manual start on a resubmission
    assert info["parentId"] == root and info["submitter"] == "bob"
    grandchild = ascob.http.get(f"/api/runs/{child}/resubmit", params={"submitter": "dan"}).json()[
        "runId"
    ]
    assert ascob.run(grandchild)["parentId"] == root
    assert ascob.http.get(f"/api/runs/{grandchild}/output.txt").text in ("", "same job")
    # files: not on resubmitted runs; the child reads the root's through its own webhook
    refused = ascob.http.post(f"/api/runs/{grandchild}/files/x.txt", content=b"x")
    assert refused.status_code == 400
    running = ascob.http.get(f"/api/runs/{root}/resubmit", params={"submitter": "eve"})
    assert running.status_code == 200
    assert ascob.http.get(f"/api/runs/{root}/resubmit").status_code == 400  # submitter needed


def test_child_reads_root_files_through_its_own_webhook(ascob: Ascob) -> None:
    root = ascob.submit(spec(manualStart=True))
    ascob.http.post(f"/api/runs/{root}/files/data.csv", content=b"a,b\n1,2\n")
    ascob.http.delete(f"/api/runs/{root}")
    child = ascob.http.get(f"/api/runs/{root}/resubmit", params={"submitter": "bob"}).json()[
        "runId"
    ]
    # keep the child alive: a RUNNING job
    hook = webhook_id_of(ascob, child)
    got = httpx.get(
        f"{ascob.url}/api/webhooks/runs/{hook}/files/data.csv",
        headers={"X-Api-Token": WEBHOOK_TOKEN},
    )
    assert got.status_code == 200 and got.content == b"a,b\n1,2\n"


def test_webhook_status_wins_and_ends_the_webhook(ascob: Ascob) -> None:
    run_id = ascob.submit(spec(labels={"status": "RUNNING"}))
    ascob.wait_status(run_id, "RUNNING")
    hook = webhook_id_of(ascob, run_id)
    url = f"{ascob.url}/api/webhooks/runs/{hook}"
    headers = {"X-Api-Token": WEBHOOK_TOKEN}
    keys = httpx.post(url, json={"identificationKeys": {"extra": "1"}}, headers=headers)
    assert keys.status_code == 200
    done = httpx.post(url, json={"status": "SUCCEEDED"}, headers=headers)
    assert done.status_code == 200 and done.json()["status"] == "SUCCEDED"
    info = ascob.wait_status(run_id, "SUCCEDED")
    assert info["endTime"]
    time.sleep(1.5)  # polling (which says RUNNING) must not override the webhook
    assert ascob.run(run_id)["status"] == "SUCCEDED"
    assert httpx.post(url, json={"status": "FAILED"}, headers=headers).status_code == 404
    assert httpx.get(url + "/files/x", headers=headers).status_code == 404


def test_webhook_rejects_unknown_status(ascob: Ascob) -> None:
    run_id = ascob.submit(spec(labels={"status": "RUNNING"}))
    hook = webhook_id_of(ascob, run_id)
    r = httpx.post(
        f"{ascob.url}/api/webhooks/runs/{hook}",
        json={"status": "DONE"},
        headers={"X-Api-Token": WEBHOOK_TOKEN},
    )
    assert r.status_code == 400 and "DONE" in r.json()["error"]
    ascob.http.delete(f"/api/runs/{run_id}")


def test_search_filters_newest_first_and_caps(ascob: Ascob) -> None:
    marker = f"searcher-{time.time_ns()}"
    ids = [ascob.submit(spec(submitter=marker)) for _ in range(3)]
    for i in ids:
        ascob.wait_status(i, "SUCCEDED")
    manual = ascob.submit(spec(submitter=marker, manualStart=True))
    r = ascob.http.post("/api/search/runs", json={"submitterFilter": marker})
    items = r.json()["items"]
    assert [i["id"] for i in items] == [manual, *reversed(ids)]
    r = ascob.http.post(
        "/api/search/runs", json={"submitterFilter": marker, "statusFilter": ["DEFINED"]}
    )
    assert [i["id"] for i in r.json()["items"]] == [manual]
    r = ascob.http.post("/api/search/runs", json={"submitterFilter": marker, "maxResults": 2})
    assert len(r.json()["items"]) == 2
    first = ascob.run(ids[0])["definedTime"]
    r = ascob.http.post(
        "/api/search/runs", json={"submitterFilter": marker, "createdAfterFilter": first}
    )
    found = [i["id"] for i in r.json()["items"]]
    assert ids[0] not in found and ids[1] in found  # strict, as the original
    r = ascob.http.post(
        "/api/search/runs",
        json={"submitterFilter": marker, "createdBeforeFilter": "2000-01-01T00:00:00"},
    )
    assert r.json()["items"] == []
    r = ascob.http.post(
        "/api/search/runs", json={"statusFilter": ["SUCCEEDED"], "submitterFilter": marker}
    )
    assert len(r.json()["items"]) == 3
    ascob.http.delete(f"/api/runs/{manual}")


def test_every_run_is_a_flow_run_of_the_deployment(ascob: Ascob) -> None:
    run_id = ascob.submit(spec())
    ascob.wait_status(run_id, "SUCCEDED")
    api = ascob.env["PREFECT_API_URL"]
    deployment = ascob.env["ASCOB_DEPLOYMENT"]

    def flow_run() -> Any:
        runs = httpx.post(
            f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"like_": f"ascob-{run_id} "}}}
        ).json()
        return runs and runs[0]["state_type"] == "COMPLETED" and runs[0]

    fr = wait_until(flow_run, 30, "the flow run to complete")
    dep = httpx.get(f"{api}/deployments/{fr['deployment_id']}").json()
    assert dep["name"] == deployment
    assert fr["parameters"] == {"run_id": run_id}
    assert "owner:alice" in fr["tags"] and "backend:dummyBackend" in fr["tags"]
