"""``dummyBackend``: a backend driven by labels, to stand in for any real backend.

Labels:

- ``status``: the final status, ``SUCCEEDED`` (default), ``FAILED``, ``ABORTED``, or ``RUNNING``
  (runs until stopped);
- ``duration``: seconds before the job reaches that status (default 0);
- ``fail``: ``"true"`` makes the submission fail (the run ends FAILED);
- ``output``: the text of output.txt (default ``Dummy output``);
- ``submit_delay``: seconds the submission itself takes (a slow backend trigger; default 0);
- ``lost``: ``"true"`` makes the backend forget the job once submitted (status: job not found);
- ``doubt``: ``"true"`` loses the submission's answer (the run ends IN_DOUBT);
- ``progressive``: ``"true"`` prints the output a line at a time over ``duration`` (a job that
  prints while it runs), instead of all at once.

What it reports is computed from the identification keys and the clock, plus the stops it
recorded in a small SQLite file, so it does not change when ASCOB restarts. That file is its
"world": in its data folder by default, or in ``ASCOB_DUMMY_DIR`` when set, so that several ASCOB
processes (API replicas, executors, each with its own ASCOB_HOME) share one world, as they would
share one real backend: a stop recorded by one executor is seen by the one that takes the run
over. The world also records every job it started (``jobs``: job id, ASCOB run id, start time,
duration, final status, parameters), which the soak (bench/soak) reads as the backend's own
evidence. For compatibility it also takes specs without a backend id whose description contains
"dummy".
"""

from __future__ import annotations

__all__ = ["DummyBackend"]

import asyncio
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import ClassVar

from backends import kit

_FINAL_CHOICES = {"SUCCEEDED", "SUCCEDED", "FAILED", "ABORTED", "RUNNING"}


class DummyBackend(kit.Backend):
    id: ClassVar[str] = "dummyBackend"
    can_stop: ClassVar[bool] = True

    def __init__(self, context: kit.BackendContext) -> None:
        super().__init__(context)
        world = Path(os.environ.get("ASCOB_DUMMY_DIR") or context.data_dir)
        world.mkdir(parents=True, exist_ok=True)
        self._db_path = world / "dummy.sqlite"
        with closing(self._connect()) as db, db:
            db.execute("create table if not exists stopped (job_id text primary key, at real)")
            db.execute(
                "create table if not exists jobs (job_id text primary key, run_id integer,"
                " started_at real, duration real, status text, parameters text)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._db_path, timeout=30)

    def accepts(self, labels: Mapping[str, str], description: str | None) -> bool:
        return "dummy" in (description or "").lower()

    async def check(self, labels: Mapping[str, str], parameters: Mapping[str, str]) -> list[str]:
        self.validate(labels)
        return [
            f"dummyBackend: would end {labels.get('status', 'SUCCEEDED').upper()} after "
            f"{float(labels.get('duration', '0')):g} s"
        ]

    def validate(self, labels: Mapping[str, str]) -> None:
        status = labels.get("status", "SUCCEEDED").upper()
        if status not in _FINAL_CHOICES:
            raise kit.SpecRejected(
                f"label status={labels['status']!r}: expected SUCCEEDED, FAILED, ABORTED or RUNNING"
            )
        try:
            duration = float(labels.get("duration", "0"))
        except ValueError:
            raise kit.SpecRejected(
                f"label duration={labels['duration']!r} is not a number of seconds"
            ) from None
        if not 0 <= duration < 10**7:
            raise kit.SpecRejected(f"label duration={labels['duration']!r} is out of range")
        try:
            delay = float(labels.get("submit_delay", "0"))
        except ValueError:
            raise kit.SpecRejected(
                f"label submit_delay={labels['submit_delay']!r} is not a number"
            ) from None
        if not 0 <= delay <= 3600:
            raise kit.SpecRejected(f"label submit_delay={labels['submit_delay']!r} is out of range")

    async def submit(self, job: kit.Job) -> dict[str, str]:
        labels = job.labels
        if labels.get("fail", "").lower() == "true":
            raise kit.SubmitRefused("dummyBackend: submission failed as asked (label fail=true)")
        delay = float(labels.get("submit_delay", "0"))
        if delay:
            await asyncio.sleep(delay)
        if labels.get("doubt", "").lower() == "true":
            raise ConnectionError(
                "dummyBackend: the submission's answer was lost (label doubt=true)"
            )
        status = labels.get("status", "SUCCEEDED").upper().replace("SUCCEDED", "SUCCEEDED")
        job_id, started = uuid.uuid4().hex, time.time()
        duration = labels.get("duration", "0")

        def record() -> None:
            with closing(self._connect()) as db, db:
                db.execute(
                    "insert into jobs values (?, ?, ?, ?, ?, ?)",
                    (job_id, job.run_id, started, float(duration), status,
                     json.dumps(dict(job.parameters))),
                )  # fmt: skip

        await asyncio.to_thread(record)
        return {
            "dummyJobId": job_id,
            "startedAt": repr(started),
            "status": status,
            "duration": duration,
            "output": labels.get("output", "Dummy output"),
            **({"lost": "true"} if labels.get("lost", "").lower() == "true" else {}),
            **({"progressive": "true"} if labels.get("progressive", "") == "true" else {}),
        }

    def _job_id(self, keys: Mapping[str, str]) -> str:
        try:
            return keys["dummyJobId"]
        except KeyError:
            raise kit.JobNotFound("identification keys carry no dummyJobId") from None

    def _stopped_at(self, job_id: str) -> float | None:
        with closing(self._connect()) as db:
            row = db.execute("select at from stopped where job_id = ?", (job_id,)).fetchone()
        return None if row is None else float(row[0])

    async def status(self, keys: Mapping[str, str]) -> kit.StatusReport:
        job_id = self._job_id(keys)
        if keys.get("lost") == "true":
            raise kit.JobNotFound(f"dummy job {job_id} is gone (label lost=true)")
        final = kit.BackendStatus(keys.get("status", "SUCCEEDED"))
        ends_at = float(keys.get("startedAt", "0")) + float(keys.get("duration", "0"))
        stopped_at = await asyncio.to_thread(self._stopped_at, job_id)
        if stopped_at is not None and (final is kit.BackendStatus.RUNNING or stopped_at < ends_at):
            return kit.StatusReport(kit.BackendStatus.ABORTED, "stopped")
        if final is not kit.BackendStatus.RUNNING and time.time() >= ends_at:
            return kit.StatusReport(final)
        return kit.StatusReport(kit.BackendStatus.RUNNING)

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        job_id = self._job_id(keys)

        def record() -> None:
            with closing(self._connect()) as db, db:
                db.execute(
                    "insert or ignore into stopped (job_id, at) values (?, ?)",
                    (job_id, time.time()),
                )

        await asyncio.to_thread(record)

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> kit.OutputChunk:
        data = keys.get("output", "Dummy output").encode()
        report = await self.status(keys)
        if keys.get("progressive") == "true" and not report.status.is_final:
            # the lines printed so far: line i of n appears at (i + 1) / (n + 1) of the duration
            lines = data.splitlines(keepends=True)
            duration = float(keys.get("duration", "0")) or 1.0
            elapsed = time.time() - float(keys.get("startedAt", "0"))
            shown = min(len(lines), int(elapsed / duration * (len(lines) + 1)))
            data = b"".join(lines[:shown])
        chunk = data[offset:].decode(errors="replace")
        return kit.OutputChunk(
            text=chunk, next_offset=max(offset, len(data)), more=not report.status.is_final
        )
