"""Airflow: the fake Airflow on loopback, Airflow 3's API (v2) by default; a subclass speaks
Airflow 2's (v1) for ``tests/test_airflow_contract_v1.py``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from tests.contract import LINES, Adapter, register
from tests.fakes.fake_airflow import FakeAirflow, FakeTask


@register
class AirflowAdapter(Adapter):
    backend_id = "airflowBackend"
    echoes_parameters = True
    api: ClassVar[str] = "v2"

    def start(self) -> None:
        self.fake = FakeAirflow(api=self.api).start()
        os.environ["CONTRACT_AIRFLOW_PASSWORD"] = "airflow-secret"

    def stop(self) -> None:
        self.fake.stop()

    def config(self) -> dict[str, Any]:
        instance = {
            "url": self.fake.url,
            "api": self.api,
            "username": "ascob",
            "password_env": "CONTRACT_AIRFLOW_PASSWORD",
            "timeout": 5,
        }
        return {"airflow": {"etl": instance}}

    def labels(self, outcome: str, queued: bool = False) -> dict[str, str]:
        dag_id = f"contract_{outcome}_{uuid.uuid4().hex[:6]}"
        result = {"succeeded": "success", "failed": "failed", "hang": "hang"}[outcome]
        self.fake.add_dag(
            dag_id,
            [FakeTask("prepare", ["preparing"]), FakeTask("work", LINES, result=result)],
            queue_delay=0.5 if queued else 0.0,
        )
        return {"airflow_instance": "etl", "airflow_dag_id": dag_id}

    def refused_labels(self) -> dict[str, str]:
        return {"airflow_instance": "etl", "airflow_dag_id": "no_such_dag"}

    def identity(self, keys: Mapping[str, str]) -> str:
        return keys["airflowDagRunId"]

    def invalid_labels(self) -> dict[str, str]:
        return {"airflow_instance": "unknown", "airflow_dag_id": "x"}


class AirflowV1Adapter(AirflowAdapter):
    """The same over the Airflow 2 stable REST API (basic auth)."""

    api = "v1"
