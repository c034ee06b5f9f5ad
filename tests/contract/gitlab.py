"""GitLab: the fake GitLab on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

from tests.contract import LINES, Adapter, register
from tests.fakes.fake_gitlab import FakeGitLab, JobSpec


@register
class GitLabAdapter(Adapter):
    backend_id = "gitlabBackend"
    echoes_parameters = True

    def start(self) -> None:
        self.fake = FakeGitLab().start()
        os.environ["CONTRACT_GITLAB"] = "gitlab-secret"

    def stop(self) -> None:
        self.fake.stop()

    def config(self) -> dict[str, Any]:
        return {"gitlab": {"main": {"url": self.fake.url, "token_env": "CONTRACT_GITLAB"}}}

    def labels(self, outcome: str, queued: bool = False) -> dict[str, str]:
        path = f"contract/{outcome}-{uuid.uuid4().hex[:6]}"
        result = {"succeeded": "success", "failed": "failed", "hang": "HANG"}[outcome]
        delay = 0.5 if queued else 0.0
        self.fake.add_project(
            path,
            [
                JobSpec("prepare", stage="build", lines=[], runner_delay=delay),
                JobSpec("run", stage="deploy", lines=LINES, result=result),
            ],
        )
        return {"gitlab_instance": "main", "gitlab_project": path, "gitlab_ref": "main"}

    def refused_labels(self) -> dict[str, str]:
        return {"gitlab_instance": "main", "gitlab_project": "no/such-project"}

    def identity(self, keys: Mapping[str, str]) -> str:
        return keys["gitlabPipelineId"]

    def invalid_labels(self) -> dict[str, str]:
        return {"gitlab_instance": "nowhere", "gitlab_project": "x"}
