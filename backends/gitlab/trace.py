"""A pipeline's output as one text that only grows, so that one integer offset can address it.

GitLab keeps one log (trace) per job and serves it whole: ``GET /jobs/:id/trace`` has no ranges.
ASCOB's contract has one byte offset per run. The run's output is therefore defined as the
concatenation, in stage order, of a header line and the cleaned log of every job that started::

    === job build (stage build, #101) ===
    <log of job 101>
    === job test (stage test, #102) ===
    <log of job 102 so far>

An offset can only mean the same thing to every reader, at any time, if nothing is ever inserted
before text already served. So the text served is the *stable prefix* of that concatenation:
the jobs are walked in order, and the walk stops at the first job that may still change what
comes before its successors — a job that is running (only its complete lines are served: the last
line may still grow), or one that has not started yet but still may. Jobs of one stage that run
side by side therefore appear one after another: a job's log is shown once every job before it
has ended. A job that ended without starting (skipped, canceled while pending, a manual job left
alone) adds nothing.

The per-job positions are not stored anywhere: for an offset N, a reader (a new process after a
restart, another API replica) sums the lengths of the ended jobs before it to find the job and
the position in its log where N falls. The lengths of ended logs never change, so a process may
remember them (:class:`LengthCache`); a new one reads those logs once.

Logs are cleaned line by line (ANSI colour codes and GitLab's ``section_start``/``section_end``
markers removed, a line rewritten with carriage returns keeps its last version), so the cleaned
form of a complete line never changes once served.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Any

__all__ = [
    "JOB_ENDED",
    "LengthCache",
    "clean_log",
    "has_started",
    "header",
    "in_stage_order",
]

JOB_ENDED = frozenset({"success", "failed", "canceled", "skipped"})
_JOB_ACTIVE = frozenset({"running", "canceling"})

_SECTION = re.compile(rb"section_(?:start|end):\d+:[^\r\n]*?\r")
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


def _clean_line(line: bytes) -> bytes | None:
    """One line without its end; None when it held only markers (it is dropped)."""
    cleaned = _ANSI.sub(b"", _SECTION.sub(b"", line)).rstrip(b"\r")
    if b"\r" in cleaned:
        cleaned = cleaned.rsplit(b"\r", 1)[1]
    if not cleaned and line:
        return None
    return cleaned


def clean_log(raw: bytes, complete: bool) -> bytes:
    """The readable form of a job log: only its complete lines unless ``complete`` (the job has
    ended and its last line, even without a newline, is final)."""
    if not complete:
        end = raw.rfind(b"\n")
        raw = raw[: end + 1] if end >= 0 else b""
    out = []
    lines = raw.split(b"\n")
    last = lines.pop()  # after the final newline: empty, or a last line without newline
    for line in lines:
        cleaned = _clean_line(line)
        if cleaned is not None:
            out.append(cleaned + b"\n")
    if last:
        cleaned = _clean_line(last)
        if cleaned:
            out.append(cleaned + b"\n")
    return b"".join(out)


def header(job: dict[str, Any]) -> bytes:
    name, stage, job_id = job.get("name"), job.get("stage"), job.get("id")
    return f"=== job {name} (stage {stage}, #{job_id}) ===\n".encode()


def has_started(job: dict[str, Any]) -> bool:
    return bool(job.get("started_at")) or job.get("status") in _JOB_ACTIVE


def _job_id(job: dict[str, Any]) -> int:
    try:
        return int(job.get("id") or 0)
    except (TypeError, ValueError):
        return 0


def in_stage_order(jobs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobs by stage, then by id. GitLab creates a pipeline's jobs stage after stage, so a
    stage's rank is the smallest job id in it (retried attempts included, which keeps the rank
    when a stage's only job is retried)."""
    jobs = [j for j in jobs if _job_id(j) > 0]
    rank: dict[str, int] = {}
    for job in jobs:
        stage = str(job.get("stage"))
        rank[stage] = min(rank.get(stage, _job_id(job)), _job_id(job))
    return sorted(jobs, key=lambda j: (rank[str(j.get("stage"))], _job_id(j)))


class LengthCache:
    """Lengths of the rendered logs of ended jobs (they never change), bounded; shared by the
    event loops (API, executor) of one process."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._lengths: OrderedDict[Hashable, int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> int | None:
        with self._lock:
            length = self._lengths.get(key)
            if length is not None:
                self._lengths.move_to_end(key)
            return length

    def put(self, key: Hashable, length: int) -> None:
        with self._lock:
            self._lengths[key] = length
            self._lengths.move_to_end(key)
            while len(self._lengths) > self._size:
                self._lengths.popitem(last=False)
