"""Rundeck: the fake Rundeck on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

from tests.contract import LINES, Adapter, register
from tests.fakes.fake_rundeck import FakeRundeck


@register
class RundeckAdapter(Adapter):
    backend_id = "rundeckBackend"
    echoes_parameters = True

    def start(self) -> None:
        self.fake = FakeRundeck().start()
        os.environ["CONTRACT_RUNDECK"] = "rundeck-secret"

    def stop(self) -> None:
        self.fake.stop()

    def config(self) -> dict[str, Any]:
        return {"rundeck": {"ops": {"url": self.fake.url, "token_env": "CONTRACT_RUNDECK"}}}

    def labels(self, outcome: str, queued: bool = False) -> dict[str, str]:
        name = f"{outcome}-{uuid.uuid4().hex[:6]}"
        self.fake.add_job(
            "contract",
            name,
            lines=LINES,
            final={"succeeded": "succeeded", "failed": "failed", "hang": "HANG"}[outcome],
            scheduled_delay=0.5 if queued else 0.0,
        )
        return {
            "rundeck_instance": "ops",
            "rundeck_project_name": "contract",
            "rundeck_job_name": name,
        }

    def refused_labels(self) -> dict[str, str]:
        return {"rundeck_instance": "ops", "rundeck_job_id": "no-such-job"}

    def identity(self, keys: Mapping[str, str]) -> str:
        return keys["rundeckExecutionId"]

    def invalid_labels(self) -> dict[str, str]:
        return {"rundeck_instance": "ops"}
