"""AWX / Ansible Automation Platform: the fake AWX on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

from tests.contract import LINES, Adapter, register
from tests.fakes.fake_awx import FakeAwx


@register
class AwxAdapter(Adapter):
    backend_id = "awxBackend"
    echoes_parameters = True

    def start(self) -> None:
        self.fake = FakeAwx().start()
        os.environ["CONTRACT_AWX"] = "awx-secret"

    def stop(self) -> None:
        self.fake.stop()

    def config(self) -> dict[str, Any]:
        return {"awx": {"prod": {"url": self.fake.url, "token_env": "CONTRACT_AWX"}}}

    def labels(self, outcome: str, queued: bool = False) -> dict[str, str]:
        name = f"contract-{outcome}-{uuid.uuid4().hex[:6]}"
        self.fake.add_template(
            name,
            lines=LINES,
            final={"succeeded": "successful", "failed": "failed", "hang": "HANG"}[outcome],
            pending_delay=0.5 if queued else 0.0,
        )
        return {"awx_instance": "prod", "awx_job_template": name}

    def refused_labels(self) -> dict[str, str]:
        return {"awx_instance": "prod", "awx_job_template": "no such template"}

    def identity(self, keys: Mapping[str, str]) -> str:
        return keys["awxJobId"]

    def invalid_labels(self) -> dict[str, str]:
        return {"awx_instance": "prod"}
