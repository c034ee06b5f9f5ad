"""The dummy backend needs no stand-in: labels drive it."""

from __future__ import annotations

from collections.abc import Mapping

from tests.contract import LINES, Adapter, register


@register
class DummyAdapter(Adapter):
    backend_id = "dummyBackend"

    def labels(self, outcome: str, queued: bool = False) -> dict[str, str]:
        status = {"succeeded": "SUCCEEDED", "failed": "FAILED", "hang": "RUNNING"}[outcome]
        return {"status": status, "duration": "0.3", "output": "".join(f"{x}\n" for x in LINES)}

    def refused_labels(self) -> dict[str, str]:
        return {"fail": "true"}

    def identity(self, keys: Mapping[str, str]) -> str:
        return keys["dummyJobId"]

    def invalid_labels(self) -> dict[str, str]:
        return {"status": "bogus"}
