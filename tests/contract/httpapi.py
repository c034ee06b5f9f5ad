"""Any HTTP API: ``httpBackend`` configured against the home-grown job service on loopback.

The instance is all configuration, so each outcome is its own instance (``contract-<outcome>``,
``…-queued``) whose start body names a task of that outcome; ``refused`` names a task the service
does not have (422). Parameters reach a job only through ``{param.NAME}`` templates, which the
contract's jobs do not name, so ``echoes_parameters`` is off here (tests/test_httpapi.py covers
them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tests.contract import LINES, Adapter, register
from tests.fakes.fake_http_service import FakeHttpService

OUTCOMES = {"succeeded": "ok", "failed": "error", "hang": "HANG"}


def instance(url: str, task: str) -> dict[str, Any]:
    """One instance of the service at ``url`` whose jobs run ``task``."""
    return {
        "timeout": 5,
        "secret_env": ["CONTRACT_HTTP_TOKEN"],
        "headers": {"Authorization": "Bearer {env.CONTRACT_HTTP_TOKEN}"},
        "start": {
            "url": f"{url}/jobs",
            "body": {"task": task, "ref": "{run_id}"},
            "accept": [201],
            "job_id": "job.id",
            "idempotency_header": "Idempotency-Key",
        },
        "status": {
            "url": f"{url}/jobs/{{job_id}}",
            "path": "job.status",
            "message_path": "job.error",
            "map": {
                "waiting": "queued",
                "working": "running",
                "ok": "succeeded",
                "error": "failed",
                "cancelled": "aborted",
                "killed": "aborted",
            },
        },
        "output": {"url": f"{url}/jobs/{{job_id}}/log?offset={{offset}}"},
        "stop": {"url": f"{url}/jobs/{{job_id}}/cancel"},
        "force_stop": {"url": f"{url}/jobs/{{job_id}}/cancel?force=1"},
    }


@register
class HttpAdapter(Adapter):
    backend_id = "httpBackend"

    def start(self) -> None:
        self.fake = FakeHttpService().start()
        os.environ["CONTRACT_HTTP_TOKEN"] = "service-secret"
        for outcome, final in OUTCOMES.items():
            self.fake.add_task(f"contract-{outcome}", lines=LINES, final=final)
            self.fake.add_task(
                f"contract-{outcome}-queued", lines=LINES, final=final, queue_delay=0.5
            )

    def stop(self) -> None:
        self.fake.stop()

    def config(self) -> dict[str, Any]:
        names = [*self.fake.tasks, "contract-refused"]
        return {"http": {name: instance(self.fake.url, name) for name in names}}

    def labels(self, outcome: str, queued: bool = False) -> dict[str, str]:
        return {"http_instance": f"contract-{outcome}" + ("-queued" if queued else "")}

    def refused_labels(self) -> dict[str, str]:
        return {"http_instance": "contract-refused"}

    def identity(self, keys: Mapping[str, str]) -> str:
        return keys["httpJobId"]

    def invalid_labels(self) -> dict[str, str]:
        return {"http_instance": "no-such-instance"}
