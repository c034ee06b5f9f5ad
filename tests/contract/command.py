"""Local commands: no stand-in server; each outcome is an instance whose argv runs the script
``tests/fakes/command_job.py`` with that outcome."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.contract import LINES, Adapter, register

SCRIPT = str(Path(__file__).resolve().parents[1] / "fakes" / "command_job.py")


def script(*args: str) -> list[str]:
    return [sys.executable, SCRIPT, "--lines", ",".join(LINES), *args]


@register
class CommandAdapter(Adapter):
    backend_id = "commandBackend"
    echoes_parameters = True

    def config(self) -> dict[str, Any]:
        instances: dict[str, Any] = {
            f"{outcome}{'-queued' if queued else ''}": {
                "argv": script("--outcome", outcome, *(["--delay", "0.5"] if queued else []))
            }
            for outcome in ("succeeded", "failed", "hang")
            for queued in (False, True)
        }
        instances["missing"] = {"argv": ["/nonexistent/ascob-contract-script"]}
        return {"command": instances}

    def labels(self, outcome: str, queued: bool = False) -> dict[str, str]:
        return {"command_instance": f"{outcome}{'-queued' if queued else ''}"}

    def refused_labels(self) -> dict[str, str]:
        return {"command_instance": "missing"}

    def identity(self, keys: Mapping[str, str]) -> str:
        return keys["commandJobDir"]

    def invalid_labels(self) -> dict[str, str]:
        return {"command_instance": "unknown"}
