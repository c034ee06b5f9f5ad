"""The output of a Kubernetes Job as one text with byte offsets, read incrementally.

The pod log API has no byte offsets: it answers a container's whole log, or the lines from
``sinceTime`` on (an RFC 3339 time; the server may keep only whole seconds of it, so lines of that
second come again). ASCOB's contract wants one integer offset over the concatenated output of the
job's pods (in creation order, retries included). A :class:`Cursor` is the bridge: for an offset,
it says which pods are fully read, which pod is being read, the timestamp of the last line taken
from it and how many lines had exactly that timestamp. Reading on from a cursor asks the log
``sinceTime`` that second with ``timestamps=true``, drops the lines before the cursor's timestamp
and the first ``at_last`` lines with exactly that timestamp (the boundary lines already taken),
and strips the timestamps.

Cursors live in memory. A process that does not know the cursor of an offset (a new process, or a
client asking an arbitrary offset) reads the job's logs from the start and skips to the offset;
from then on it continues incrementally.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from backends.kit import SystemHTTPError
from backends.kubernetes.client import KubernetesClient
from backends.kubernetes.jobs import CONTAINER

__all__ = [
    "Cursor",
    "CursorStore",
    "LogLine",
    "parse_log",
    "pod_order",
    "read_on",
    "since_time",
    "take_lines",
]

K = TypeVar("K", bound=Hashable)

_NS = 1_000_000_000


@dataclass(frozen=True)
class LogLine:
    ts: int  # nanoseconds since the epoch
    text: str


@dataclass(frozen=True)
class Cursor:
    """A position in a job's output."""

    offset: int = 0
    done: tuple[str, ...] = field(default_factory=tuple)  # pods read to their end
    pod: str = ""  # the pod being read ("" before its first line)
    last: int = 0  # timestamp (ns) of the last line taken from it
    at_last: int = 0  # lines with exactly that timestamp already taken


def parse_timestamp(text: str) -> int:
    """``2024-05-01T10:00:00.12Z`` (RFC 3339, up to nanoseconds) -> nanoseconds since the epoch."""
    head, dot, rest = text.partition(".")
    fraction = ""
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, zone = rest[:digits], rest[digits:]
        head += zone
    when = datetime.fromisoformat(head.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"timestamp without a zone: {text!r}")
    nanos = int((fraction + "000000000")[:9]) if fraction else 0
    return int(when.timestamp()) * _NS + nanos


def since_time(ns: int) -> str:
    """The ``sinceTime`` of a timestamp: its second, RFC 3339 in UTC (the lines of that whole
    second come back; :func:`take_lines` drops those already taken)."""
    return datetime.fromtimestamp(ns // _NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_log(text: str, complete: bool) -> list[LogLine]:
    """Lines of a ``timestamps=true`` log. A last line without its newline is kept only when the
    container has ended (``complete``): otherwise it is still being written."""
    pieces = text.split("\n")
    tail = pieces.pop()  # "" when the text ends with a newline
    if tail and complete:
        pieces.append(tail)
    lines = []
    for piece in pieces:
        stamp, _, rest = piece.partition(" ")
        lines.append(LogLine(parse_timestamp(stamp), rest.removesuffix("\r")))
    return lines


def take_lines(cursor: Cursor, pod: str, lines: Iterable[LogLine]) -> tuple[Cursor, list[str]]:
    """The lines of ``pod`` after the cursor, and the cursor after them."""
    if cursor.pod != pod:
        cursor = replace(cursor, pod=pod, last=0, at_last=0)
    seen_at_last, taken = 0, []
    last, at_last, offset = cursor.last, cursor.at_last, cursor.offset
    for line in lines:
        if line.ts < cursor.last:
            continue
        if line.ts == cursor.last and seen_at_last < cursor.at_last:
            seen_at_last += 1
            continue
        taken.append(line.text)
        offset += len(line.text.encode()) + 1
        if line.ts == last:
            at_last += 1
        else:
            last, at_last = line.ts, 1
    return replace(cursor, offset=offset, last=last, at_last=at_last), taken


def _done(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def pod_order(pod: dict[str, Any]) -> tuple[str, int, str, str]:
    """Creation order. Creation times have whole seconds; within one second a finished pod came
    before a running one (a Job's retries start after the failed pod ended)."""
    meta = pod.get("metadata") or {}
    return (
        str(meta.get("creationTimestamp") or ""),
        0 if _done(pod) else 1,
        str((pod.get("status") or {}).get("startTime") or ""),
        str(meta.get("name") or ""),
    )


class CursorStore(Generic[K]):
    """The cursors of the offsets this process answered, a few per job, for the most recent
    jobs. Thread-safe: the API's and the executor's event loops share one backend."""

    def __init__(self, per_job: int = 8, jobs: int = 256) -> None:
        self._per_job, self._jobs = per_job, jobs
        self._lock = threading.Lock()
        self._cursors: OrderedDict[K, dict[int, Cursor]] = OrderedDict()

    def nearest(self, job: K, offset: int) -> Cursor:
        """The known cursor nearest before ``offset`` (the start if none)."""
        with self._lock:
            known = self._cursors.get(job) or {}
            best = max((o for o in known if o <= offset), default=None)
            return known[best] if best is not None else Cursor()

    def keep(self, job: K, cursor: Cursor) -> None:
        with self._lock:
            known = self._cursors.setdefault(job, {})
            self._cursors.move_to_end(job)
            known[cursor.offset] = cursor
            while len(known) > self._per_job:
                del known[min(known)]
            while len(self._cursors) > self._jobs:
                self._cursors.popitem(last=False)


async def read_on(
    client: KubernetesClient, namespace: str, job: str, cursor: Cursor
) -> tuple[Cursor, list[str], bool]:
    """The output lines of the Job's pods after ``cursor``, the cursor after them, and whether a
    pod is still writing (or not started). Raises what the client raises."""
    pods = await client.list_pods(namespace, f"job-name={job}")
    lines: list[str] = []
    for pod in sorted(pods, key=pod_order):
        name = str((pod.get("metadata") or {}).get("name") or "")
        if not name or name in cursor.done:
            continue
        phase = (pod.get("status") or {}).get("phase")
        if phase in (None, "Pending", "Unknown"):
            return cursor, lines, True
        ended = phase in ("Succeeded", "Failed")
        since = since_time(cursor.last) if cursor.pod == name and cursor.last else None
        try:
            text = await client.pod_log(namespace, name, CONTAINER, since)
        except SystemHTTPError as exc:
            if exc.status_code == 404:  # the pod went away meanwhile: nothing more from it
                text, ended = "", True
            elif exc.status_code == 400 and not ended:  # its container is not started yet
                return cursor, lines, True
            elif exc.status_code == 400:  # ended without its container ever running
                text = ""
            else:
                raise
        cursor, taken = take_lines(cursor, name, parse_log(text, ended))
        lines += taken
        if not ended:
            return cursor, lines, True
        cursor = Cursor(offset=cursor.offset, done=(*cursor.done, name))
    return cursor, lines, False
