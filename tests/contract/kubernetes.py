"""Kubernetes: the fake Kubernetes API server on loopback (one template per outcome)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tests.contract import LINES, Adapter, register
from tests.fakes.fake_kubernetes import FakeKubernetes

OUTCOMES = {"succeeded": [0], "failed": [1], "hang": [0]}


@register
class KubernetesAdapter(Adapter):
    backend_id = "kubernetesBackend"
    echoes_parameters = True

    def start(self) -> None:
        self.fake = FakeKubernetes().start()
        os.environ["CONTRACT_KUBERNETES"] = "k8s-secret"
        os.environ["CONTRACT_KUBERNETES_WRONG"] = "not-the-token"
        for outcome, codes in OUTCOMES.items():
            for queued in (False, True):
                self.fake.add_image(
                    self._image(outcome, queued),
                    lines=LINES,
                    exit_codes=codes,
                    hang=outcome == "hang",
                    start_delay=0.5 if queued else 0.0,
                )

    @staticmethod
    def _image(outcome: str, queued: bool) -> str:
        return f"contract/{outcome}{'-queued' if queued else ''}:1"

    def stop(self) -> None:
        self.fake.stop()

    def config(self) -> dict[str, Any]:
        templates = {
            f"{outcome}{'-queued' if queued else ''}": {
                "image": self._image(outcome, queued),
                "command": ["/bin/run"],
                "backoff_limit": 0,
            }
            for outcome in OUTCOMES
            for queued in (False, True)
        }
        common = {"url": self.fake.url, "namespace": "ascob", "templates": templates}
        return {
            "kubernetes": {
                "k8s": {**common, "token_env": "CONTRACT_KUBERNETES"},
                "badcreds": {**common, "token_env": "CONTRACT_KUBERNETES_WRONG"},
            }
        }

    def labels(self, outcome: str, queued: bool = False) -> dict[str, str]:
        template = f"{outcome}{'-queued' if queued else ''}"
        return {"kubernetes_instance": "k8s", "kubernetes_template": template}

    def refused_labels(self) -> dict[str, str]:
        return {"kubernetes_instance": "badcreds", "kubernetes_template": "succeeded"}

    def identity(self, keys: Mapping[str, str]) -> str:
        return keys["kubernetesJobUid"]

    def invalid_labels(self) -> dict[str, str]:
        return {"kubernetes_instance": "k8s", "kubernetes_template": "no-such-template"}
