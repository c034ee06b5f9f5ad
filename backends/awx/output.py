"""The plain-text output of AWX jobs, built from their events, readable by byte offset.

AWX keeps a job's output as events, each with its ``stdout`` and the output lines it covers
(``start_line`` .. ``end_line``); ``stdout/?format=txt`` is those stdouts in line order, ANSI
colours removed. Events are saved asynchronously, so while a job runs a later event may be
visible before an earlier one. A byte-offset reader must never see text move, so only the
*stable prefix* is served: events in line order while each starts where the previous ended. Once
the job has ended and AWX says ``event_processing_finished``, everything is served and the output
is complete.

A workflow job's output is its child jobs' output, each under a header line, in the order AWX
spawned them (job id). A child is followed by the next only once it is complete, so that text
never moves there either.

:class:`Checkpoints` remembers, per job, which output line a byte offset falls on, so that a
reader following the output (offset after offset) asks AWX only for the events it has not read.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from backends.awx.client import EVENT_PATHS, AwxClient

__all__ = [
    "FINAL_STATES",
    "Checkpoints",
    "StableText",
    "clean",
    "job_text",
    "stable_text",
    "workflow_text",
]

FINAL_STATES = frozenset({"successful", "failed", "error", "canceled"})
MAX_WORKFLOW_DEPTH = 5  # nested workflows followed this deep

# What AWX's format=txt removes: event data embedded in ANSI sequences, then colour codes.
_EVENT_DATA = re.compile(r"\x1b\[K(?:[A-Za-z0-9+/=]+\x1b\[\d+D)+\x1b\[K")
_COLOUR = re.compile(r"\x1b[^m]*m")


def clean(stdout: str) -> str:
    return _COLOUR.sub("", _EVENT_DATA.sub("", stdout))


def _line(event: Mapping[str, Any], key: str) -> int | None:
    value = event.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class StableText:
    text: str
    end_line: int  # the output line the next event must start on


def stable_text(events: Iterable[Mapping[str, Any]], from_line: int, complete: bool) -> StableText:
    """The text of ``events`` (sorted by line) from ``from_line``; only the gap-free prefix
    unless ``complete``."""
    parts: list[str] = []
    expected = from_line
    ordered = sorted(events, key=lambda e: (_line(e, "start_line") or 0, _line(e, "end_line") or 0))
    for event in ordered:
        start, end = _line(event, "start_line"), _line(event, "end_line")
        if start is None or end is None:
            if not complete:
                break  # an event AWX describes oddly: wait for the job to end
            start = end = expected
        if start < expected:
            continue  # before our starting line (or an empty event at a seen line)
        if start > expected and not complete:
            break  # an earlier event is not saved yet
        stdout = event.get("stdout")
        if isinstance(stdout, str) and stdout:
            parts.append(clean(stdout) + "\n")
        expected = max(end, start)
    return StableText("".join(parts), expected)


async def job_text(
    client: AwxClient, kind: str, job_id: int, detail: Mapping[str, Any], from_line: int
) -> tuple[str, int, bool]:
    """(stable text from ``from_line``, its end line, complete) of a job that is not a workflow;
    ``detail`` is the job as AWX describes it (status, event_processing_finished)."""
    ended = detail.get("status") in FINAL_STATES
    if kind not in EVENT_PATHS:
        return "", from_line, ended  # workflow approvals print nothing
    complete = ended and bool(detail.get("event_processing_finished", True))
    events = await client.events(kind, job_id, from_line)
    text = stable_text(events, from_line, complete)
    return text.text, text.end_line, complete


async def workflow_text(client: AwxClient, workflow_id: int, depth: int = 0) -> tuple[str, bool]:
    """(text, complete) of a workflow job: its children in spawn order, each complete child,
    then the first one that is not complete yet."""
    detail = await client.unified_job("workflow_job", workflow_id)
    children: list[tuple[int, str, str]] = []
    for node in await client.workflow_nodes(workflow_id):
        job_id = node.get("job")
        if not isinstance(job_id, int) or isinstance(job_id, bool):
            continue  # not spawned (yet, or ever)
        summary = (node.get("summary_fields") or {}).get("job") or {}
        children.append((job_id, str(summary.get("type") or "job"), str(summary.get("name", ""))))
    parts: list[str] = []
    for job_id, kind, name in sorted(children):
        parts.append(f"===== {kind} {job_id}: {name} =====\n")
        if kind == "workflow_job" and depth < MAX_WORKFLOW_DEPTH:
            text, complete = await workflow_text(client, job_id, depth + 1)
        else:
            child = await client.unified_job(kind, job_id)
            text, _, complete = await job_text(client, kind, job_id, child, 0)
        parts.append(text)
        if not complete:
            return "".join(parts), False
    return "".join(parts), detail.get("status") in FINAL_STATES


class Checkpoints:
    """Per job: byte offset -> output line, for offsets this process has handed out."""

    def __init__(self, max_jobs: int = 1000) -> None:
        self._jobs: OrderedDict[tuple[str, str, int], dict[int, int]] = OrderedDict()
        self._max_jobs = max_jobs

    def best(self, job: tuple[str, str, int], offset: int) -> tuple[int, int]:
        """The known (byte offset, line) closest below ``offset``; (0, 0) if none."""
        marks = self._jobs.get(job)
        if not marks:
            return 0, 0
        self._jobs.move_to_end(job)
        below = [b for b in marks if b <= offset]
        if not below:
            return 0, 0
        at = max(below)
        return at, marks[at]

    def remember(self, job: tuple[str, str, int], offset: int, line: int) -> None:
        marks = self._jobs.setdefault(job, {})
        self._jobs.move_to_end(job)
        marks[offset] = line
        if len(marks) > 64:  # keep the newest few: readers ask from where they stopped
            for old in sorted(marks)[:-32]:
                del marks[old]
        while len(self._jobs) > self._max_jobs:
            self._jobs.popitem(last=False)
