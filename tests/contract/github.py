"""GitHub Actions: the fake GitHub REST API on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

from tests.contract import LINES, Adapter, register
from tests.fakes.fake_github import FakeGitHub, FakeJob

REPOSITORY = "contract/pipelines"


@register
class GitHubAdapter(Adapter):
    backend_id = "githubActionsBackend"
    echoes_parameters = True

    def start(self) -> None:
        self.fake = FakeGitHub().start()
        os.environ["CONTRACT_GITHUB"] = "github-secret"

    def stop(self) -> None:
        self.fake.stop()

    def config(self) -> dict[str, Any]:
        return {
            "github": {
                "cloud": {"url": self.fake.url, "token_env": "CONTRACT_GITHUB", "timeout": 5}
            }
        }

    def labels(self, outcome: str, queued: bool = False) -> dict[str, str]:
        file = f"{outcome}-{uuid.uuid4().hex[:6]}.yml"
        conclusion = {"succeeded": "success", "failed": "failure", "hang": "HANG"}[outcome]
        # two jobs: the output grows job by job; the outcome is the second job's
        self.fake.add_workflow(
            REPOSITORY,
            file,
            jobs=[FakeJob("prepare", LINES[:1]), FakeJob("main", LINES[1:], conclusion)],
            inputs={"ascob_run": False, "GREETING": False},
            queue_delay=0.5 if queued else 0.0,
        )
        return {
            "github_instance": "cloud",
            "github_repository": REPOSITORY,
            "github_workflow": file,
        }

    def refused_labels(self) -> dict[str, str]:
        return {
            "github_instance": "cloud",
            "github_repository": REPOSITORY,
            "github_workflow": "no-such-workflow.yml",
        }

    def identity(self, keys: Mapping[str, str]) -> str:
        return keys["githubRunId"]

    def invalid_labels(self) -> dict[str, str]:
        return {"github_instance": "cloud", "github_workflow": "deploy.yml"}
