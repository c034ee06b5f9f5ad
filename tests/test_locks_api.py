"""GET /api/locks: the holder of each lock, since when, its fencing token, and who waits."""

from __future__ import annotations

import uuid

from tests.harness import JOB_MANAGER_TOKEN, WEBHOOK_TOKEN, Ascob, wait_until


def test_locks_lists_holder_token_and_waiters_in_order(ascob: Ascob) -> None:
    key = f"api-lock-{uuid.uuid4().hex[:6]}"

    def spec(status: str) -> dict[str, object]:
        return {
            "description": "dummy lock holder",
            "labels": {"_execution_backend_id": "dummyBackend", "status": status},
            "locks": [{"key": key}],
        }

    holder = ascob.submit(spec("RUNNING"))
    ascob.wait_status(holder, "RUNNING")
    first, second = ascob.submit(spec("SUCCEEDED")), None
    ascob.wait_status(first, "WAITING_LOCKS")
    second = ascob.submit(spec("SUCCEEDED"))
    ascob.wait_status(second, "WAITING_LOCKS")

    def mine() -> dict[str, object] | None:
        r = ascob.http.get("/api/locks", headers={"X-Api-Token": JOB_MANAGER_TOKEN})
        assert r.status_code == 200, r.text
        found = [i for i in r.json()["items"] if i["key"] == key]
        return found[0] if found and len(found[0]["waitingRunIds"]) == 2 else None

    lock = wait_until(mine, 30, "both waiters to be listed")
    assert lock["holderRunId"] == holder
    assert lock["waitingRunIds"] == [first, second]
    assert isinstance(lock["fencingToken"], int) and lock["since"]
    assert ascob.http.get("/api/locks", headers={"X-Api-Token": WEBHOOK_TOKEN}).status_code in (
        401,
        403,
    )

    assert ascob.http.delete(f"/api/runs/{holder}").status_code == 200
    ascob.wait_status(first, "SUCCEDED")
    ascob.wait_status(second, "SUCCEDED")
