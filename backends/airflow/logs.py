"""A dag run's output: the logs of its task instances as one text that only ever grows.

Task instances are ordered by start date (then task id and map index), each try under a header
line ``=== task (try n) ===``. The text stops after the first task instance still going: a task
that started later (in parallel) is shown once every task before it has finished, so a log never
grows in the middle of the text and byte offsets stay valid between calls. The log of a finished
try no longer changes and is kept (a bounded cache), so following a run reads each finished log
once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from backends.airflow.client import AirflowClient, AirflowHTTPError

__all__ = ["TaskLogs"]

TI_FINAL = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
TI_NOT_STARTED = frozenset({None, "", "none", "scheduled", "queued", "removed"})


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


class TaskLogs:
    """Builds the output text of dag runs; keeps the logs of finished tries."""

    def __init__(self, cache_size: int = 512) -> None:
        self._cache: OrderedDict[tuple[str, ...], list[str]] = OrderedDict()
        self._cache_size = cache_size

    async def text(
        self,
        client: AirflowClient,
        instance: str,
        dag_id: str,
        run_id: str,
        tis: list[dict[str, Any]],
    ) -> tuple[str, bool]:
        """The text so far, and whether every started task instance is done (tasks that never
        started cannot add output: a finished run may leave some unstarted)."""

        def order(ti: dict[str, Any]) -> tuple[str, str, int]:
            return (str(ti.get("start_date")), str(ti.get("task_id")), _int(ti.get("map_index")))

        started = sorted(
            (t for t in tis if t.get("start_date") and t.get("state") not in TI_NOT_STARTED),
            key=order,
        )
        complete = all(t.get("state") in TI_FINAL for t in started)
        pieces: list[str] = []
        for ti in started:
            task_id, map_index = str(ti.get("task_id")), _int(ti.get("map_index"))
            done = ti.get("state") in TI_FINAL
            label = task_id if map_index < 0 else f"{task_id}[{map_index}]"
            for attempt in range(1, max(1, _int(ti.get("try_number"))) + 1):
                key = (instance, dag_id, run_id, task_id, str(map_index), str(attempt))
                lines = self._cache.get(key)
                if lines is None:
                    try:
                        lines = await client.task_log(dag_id, run_id, task_id, attempt, map_index)
                    except AirflowHTTPError as exc:
                        if exc.status_code != 404:
                            raise
                        lines = []  # no log for this try (yet)
                    if done:
                        self._remember(key, lines)
                pieces.append(f"=== {label} (try {attempt}) ===\n")
                pieces.extend(f"{line}\n" for line in lines)
            if not done:
                return "".join(pieces), False
        return "".join(pieces), complete

    def _remember(self, key: tuple[str, ...], lines: list[str]) -> None:
        self._cache[key] = lines
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
