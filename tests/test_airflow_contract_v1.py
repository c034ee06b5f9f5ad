"""The shared backend contract suite over ``airflowBackend`` talking to Airflow 2 (``api = "v1"``).

``tests/test_backend_contract.py`` runs it over Airflow 3's API (the registered adapter); this
module imports the same tests and gives them the v1 adapter instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.contract.airflow import AirflowV1Adapter
from tests.test_backend_contract import *  # noqa: F403 - the contract's tests, collected here too


@pytest.fixture(scope="module")
def adapter() -> Iterator[AirflowV1Adapter]:
    made = AirflowV1Adapter()
    made.start()
    yield made
    made.stop()
