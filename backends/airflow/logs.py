"""A dag run's output: the logs of its task instances as one text that is append-only by
construction.

The text is a list of sections, one per try of a task instance that logged something, each under
a header line ``=== task (try n) ===`` (``task[i]`` for a mapped one). What was served is kept
in a *transcript* (in memory, and in ``<data_dir>/transcripts/`` so that a restarted ASCOB goes
on from the same text): a section once shown keeps its place and its lines, and only the last
section may still grow, by lines appended after those it has. A log that rewrites itself (Airflow
3 adds "where the log was read from" notes while a task runs and drops them once it ended) can
therefore never move a byte already served: the notes are left out, and anything else that
changed in lines already served stays as it was served.

The sections come in the order the tries first show up (ordered by start date, task id and map
index among those seen at once). The text stops at the first try that is not *settled*: a try is
settled when a later try exists, or its task instance never ran a process (EmptyOperator), or it
ended and its log says the task's process is over (Airflow's closing ``Post Execute`` group, or
``Task killed!`` after a stop), or it ended more than ``grace`` seconds ago. Airflow marks a task
failed at once when its dag run is stopped, while the process goes on logging until it is killed;
reading on until it is over keeps those last lines. Tries numbered 0 (skipped, upstream failed:
nothing ran) have no section.

Airflow 3 log entries are rendered ``[timestamp] LEVEL - event``; the "Task failed with
exception" entry is followed by the exception it carries (``error_detail``) as Python prints it;
Airflow's folding marks (``::group::…``, ``::endgroup::``) are left out, their lines kept.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backends.airflow.client import AirflowClient, AirflowHTTPError

__all__ = ["TaskLogs", "render_entries"]

TI_FINAL = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
TI_NOT_STARTED = frozenset({None, "", "none", "scheduled", "queued", "removed"})
# a try whose process has ended (the task instance may still get another try)
TRY_ENDED = TI_FINAL | {"up_for_retry", "up_for_reschedule"}
_SOURCES_GROUP = "::group::Log message source details"
_KILLED = "Task killed!"
_POST_EXECUTE = "::group::Post Execute"


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


# --------------------------------------------------------------------------- rendering


def _exception_lines(detail: Any) -> list[str]:
    """Airflow's ``error_detail`` (a list of exceptions with their frames) as Python prints a
    traceback: frames, then ``Type: value``."""
    if not isinstance(detail, list):
        return [str(detail)] if detail else []
    lines: list[str] = []
    for i, exc in enumerate(e for e in detail if isinstance(e, dict)):
        if i:
            lines.append("")
            lines.append(
                "The above exception was the direct cause of the following exception:"
                if exc.get("is_cause")
                else "During handling of the above exception, another exception occurred:"
            )
            lines.append("")
        frames = [f for f in exc.get("frames") or [] if isinstance(f, dict)]
        if frames:
            lines.append("Traceback (most recent call last):")
            for f in frames:
                lines.append(
                    f'  File "{f.get("filename")}", line {f.get("lineno")}, in {f.get("name")}'
                )
        kind, value = exc.get("exc_type") or "Exception", exc.get("exc_value")
        lines.append(f"{kind}: {value}" if value not in (None, "") else str(kind))
        lines.extend(str(note) for note in exc.get("exc_notes") or [])
    return lines


def render_entries(entries: list[Any]) -> tuple[list[str], bool]:
    """Airflow 3 log entries (``StructuredLogMessage``, or plain strings) as text lines, and
    whether they say the task's process is over. The "Log message source details" group, which
    says where the server read the log (a path, "Could not read served logs: ..."), is left
    out: it changes while the task runs and once it ended."""
    lines: list[str] = []
    in_sources = False
    post_execute = over = False
    for entry in entries:
        if isinstance(entry, str):
            lines.extend(entry.splitlines() or [""])
            continue
        if not isinstance(entry, dict):
            continue
        event = str(entry.get("event", ""))
        if "sources" in entry or event.startswith(_SOURCES_GROUP):
            in_sources = "::endgroup::" not in event
            continue
        if in_sources:
            in_sources = not event.startswith("::endgroup::")
            continue
        if event.startswith(_POST_EXECUTE):
            post_execute = True
        elif post_execute and event.startswith("::endgroup::"):
            over = True
        if event == _KILLED:
            over = True
        if event.startswith(("::group::", "::endgroup::")):
            continue  # Airflow's folding marks for its own UI: no text of the task's
        head = f"[{entry['timestamp']}] " if entry.get("timestamp") else ""
        level = f"{str(entry['level']).upper()} - " if entry.get("level") else ""
        lines.append(f"{head}{level}{event}")
        lines.extend(_exception_lines(entry.get("error_detail")))
    return lines, over


# --------------------------------------------------------------------------- the transcript


@dataclass
class Section:
    key: str  # task_id/map_index/try
    header: str
    shown: int = 0  # lines of it in the text
    closed: bool = False
    ended_at: float | None = None  # when this process first saw the try ended (grace)


@dataclass
class Transcript:
    """What was served of one dag run's output; only ever extended."""

    text: str = ""
    sections: list[Section] = field(default_factory=list)
    version: int = 0

    def find(self, key: str) -> Section | None:
        return next((s for s in self.sections if s.key == key), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> Transcript:
        data = json.loads(raw)
        return cls(
            text=str(data["text"]),
            sections=[Section(**s) for s in data["sections"]],
            version=int(data["version"]),
        )


@dataclass(frozen=True)
class _Try:
    key: str
    label: str
    attempt: int
    task_id: str
    map_index: int
    ended: bool  # this try's process ended, as far as the task instance's state says
    later: bool  # a later try of the task instance exists
    processless: bool  # the task instance never ran a process (EmptyOperator)


def _tries(tis: list[dict[str, Any]]) -> list[_Try]:
    def order(ti: dict[str, Any]) -> tuple[str, str, int]:
        return (str(ti.get("start_date")), str(ti.get("task_id")), _int(ti.get("map_index")))

    started = sorted(
        (t for t in tis if t.get("start_date") and t.get("state") not in TI_NOT_STARTED),
        key=order,
    )
    found: list[_Try] = []
    for ti in started:
        task_id, map_index = str(ti.get("task_id")), _int(ti.get("map_index"))
        label = task_id if map_index < 0 else f"{task_id}[{map_index}]"
        last = _int(ti.get("try_number"))
        state = ti.get("state")
        processless = state in TI_FINAL and "pid" in ti and not ti.get("pid")
        for attempt in range(1, last + 1):  # try 0: it never ran (skipped, upstream failed)
            found.append(
                _Try(
                    key=f"{task_id}/{map_index}/{attempt}",
                    label=label,
                    attempt=attempt,
                    task_id=task_id,
                    map_index=map_index,
                    ended=attempt < last or state in TRY_ENDED,
                    later=attempt < last,
                    processless=processless,
                )
            )
    return found


class TaskLogs:
    """Builds the output text of dag runs, append-only (see the module's docstring)."""

    def __init__(
        self, folder: Path | None = None, grace: float = 30.0, cache_size: int = 256
    ) -> None:
        self.folder = folder
        self.grace = grace
        self._memory: OrderedDict[str, Transcript] = OrderedDict()  # the latest, bounded
        self._cache_size = cache_size

    # ------------------------------------------------------------------ storage

    def _path(self, name: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.json"

    def _load(self, name: str) -> Transcript:
        path = self._path(name)
        if path is not None:
            try:
                stored = Transcript.from_json(path.read_text())
            except FileNotFoundError:
                stored = None
            except (OSError, ValueError, KeyError, TypeError):
                stored = None  # unreadable: start again (only what this process keeps counts)
            mine = self._memory.get(name)
            if stored is not None and (mine is None or stored.version >= mine.version):
                self._remember(name, stored)
        if name not in self._memory:
            self._remember(name, Transcript())
        self._memory.move_to_end(name)
        return self._memory[name]

    def _remember(self, name: str, transcript: Transcript) -> None:
        self._memory[name] = transcript
        self._memory.move_to_end(name)
        while len(self._memory) > self._cache_size:
            self._memory.popitem(last=False)

    def _commit(self, name: str, base: int, new: Transcript) -> Transcript:
        """Keep ``new`` if nothing else extended the transcript since version ``base``;
        otherwise the other one stands (it extends what was served too)."""
        path = self._path(name)
        if path is None:
            current = self._memory.get(name)
            if current is not None and current.version != base:
                return current
            self._remember(name, new)
            return new
        path.parent.mkdir(parents=True, exist_ok=True)
        with (path.parent / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._load(name)
            if current.version != base:
                return current
            tmp = path.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_text(new.to_json())
            os.replace(tmp, path)
            self._remember(name, new)
            return new

    # ------------------------------------------------------------------ the text

    async def text(
        self,
        client: AirflowClient,
        instance: str,
        dag_id: str,
        run_id: str,
        tis: list[dict[str, Any]],
    ) -> tuple[str, bool]:
        """The text so far, and whether every started try is settled (tries that never started
        cannot add output: a finished run may leave some unstarted)."""
        name = f"{instance}\0{dag_id}\0{run_id}"
        base = self._load(name)
        new = Transcript(base.text, [Section(**asdict(s)) for s in base.sections], base.version)
        pieces: list[str] = []
        complete = True
        now = time.time()
        for one in _tries(tis):
            section = new.find(one.key)
            if section is not None and section.closed:
                continue
            lines: list[str] = []
            over = one.processless
            if not one.processless:
                lines, over = await self._read(client, dag_id, run_id, one)
            if one.ended and section is not None and section.ended_at is None:
                section.ended_at = now
            ended_at = section.ended_at if section is not None else (now if one.ended else None)
            late = ended_at is not None and now - ended_at >= self.grace
            settled = one.ended and (one.processless or over or one.later or late)
            if section is None:
                if not lines and settled:
                    continue  # nothing ran, nothing to show: no (empty) section
                section = Section(one.key, f"=== {one.label} (try {one.attempt}) ===")
                section.ended_at = ended_at
                new.sections.append(section)
            # the lines beyond those served; had the log changed under those, they stay as served
            fresh = lines[section.shown :]
            if fresh:
                if section.shown == 0:
                    pieces.append(section.header + "\n")
                pieces.extend(f"{line}\n" for line in fresh)
                section.shown += len(fresh)
            if settled:
                section.closed = True
                continue
            complete = False
            break
        if not pieces and new.sections == base.sections:
            return base.text, complete
        new.text = base.text + "".join(pieces)
        new.version = base.version + 1
        kept = self._commit(name, base.version, new)
        return kept.text, complete and kept is new

    async def _read(
        self, client: AirflowClient, dag_id: str, run_id: str, one: _Try
    ) -> tuple[list[str], bool]:
        try:
            where = (dag_id, run_id, one.task_id, one.attempt, one.map_index)
            if client.api == "v1":
                return await client.task_log(*where), True  # Airflow 2 logs before the state
            entries = await client.task_log_entries(*where)
        except AirflowHTTPError as exc:
            if exc.status_code != 404:
                raise
            return [], client.api == "v1"  # no log for this try (yet, on Airflow 3)
        return render_entries(entries)
