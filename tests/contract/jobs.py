"""The example backend of docs/backends.md (tests/jobs_backend.py) against the job service on
loopback. It is no entry point: the suite adds it through ``EXAMPLES``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tests.contract import LINES, Adapter, register
from tests.fakes.fake_http_service import FakeHttpService

OUTCOMES = {"succeeded": "ok", "failed": "error", "hang": "HANG"}


@register
class JobsAdapter(Adapter):
    backend_id = "jobsBackend"
    echoes_parameters = True

    def start(self) -> None:
        self.fake = FakeHttpService().start()
        os.environ["CONTRACT_JOBS_TOKEN"] = "service-secret"
        for outcome, final in OUTCOMES.items():
            self.fake.add_task(f"contract-{outcome}", lines=LINES, final=final)
            self.fake.add_task(
                f"contract-{outcome}-queued", lines=LINES, final=final, queue_delay=0.5
            )

    def stop(self) -> None:
        self.fake.stop()

    def config(self) -> dict[str, Any]:
        return {"jobs": {"main": {"url": self.fake.url, "token_env": "CONTRACT_JOBS_TOKEN"}}}

    def labels(self, outcome: str, queued: bool = False) -> dict[str, str]:
        return {"jobs_task": f"contract-{outcome}" + ("-queued" if queued else "")}

    def refused_labels(self) -> dict[str, str]:
        return {"jobs_task": "no-such-task"}  # the service answers 422

    def identity(self, keys: Mapping[str, str]) -> str:
        return keys["jobsJobId"]

    def invalid_labels(self) -> dict[str, str]:
        return {"jobs_instance": "nowhere", "jobs_task": "contract-succeeded"}
