"""Jenkins: the fake Jenkins on loopback.

The contract runs over jobs *without* the ``ASCOB_RUN`` parameter (any job, as it is: the path a
new user takes, where identical queued requests are merged by Jenkins and ASCOB triggers again);
tests/test_jenkins.py covers the ``ASCOB_RUN`` path as thoroughly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

from tests.contract import LINES, Adapter, register
from tests.fakes.fake_jenkins import FakeJenkins


@register
class JenkinsAdapter(Adapter):
    backend_id = "jenkinsBackend"
    echoes_parameters = True

    def start(self) -> None:
        self.fake = FakeJenkins().start()
        os.environ["CONTRACT_JENKINS"] = "jenkins-secret"

    def stop(self) -> None:
        self.fake.stop()

    def config(self) -> dict[str, Any]:
        return {
            "jenkins": {
                "ci": {"url": self.fake.url, "user": "ascob", "token_env": "CONTRACT_JENKINS"}
            }
        }

    def labels(self, outcome: str, queued: bool = False) -> dict[str, str]:
        path = f"contract/{outcome}-{uuid.uuid4().hex[:6]}"
        result = {"succeeded": "SUCCESS", "failed": "FAILURE", "hang": "HANG"}[outcome]
        self.fake.add_job(
            path,
            parameters={"GREETING": "none"},
            lines=LINES,
            result=result,
            queue_delay=0.5 if queued else 0.0,
        )
        return {"jenkins_instance": "ci", "jenkins_project_name": path}

    def refused_labels(self) -> dict[str, str]:
        return {"jenkins_instance": "ci", "jenkins_project_name": "no/such/job"}

    def identity(self, keys: Mapping[str, str]) -> str:
        return keys["jenkinsQueueId"]  # a merged request would answer the same queue item

    def invalid_labels(self) -> dict[str, str]:
        return {"jenkins_instance": "unknown", "jenkins_project_name": "x"}
