"""The job directory: every fact about one command job lives in files, so that a brand-new
ASCOB process (after a restart) knows as much as the one that started the job.

Layout of ``<data_dir>/jobs/<runId>-<nonce>/`` (created ``0700``; parameters may be private)::

    job.json      what to run: argv, workdir, env, timeout, host     (ASCOB, before the start)
    runner.json   the runner's pid and start time                     (ASCOB and the runner)
    command.json  the command's pid (= its process group) and start time        (the runner)
    output.log    stdout + stderr of the command                                 (the command)
    stopped.json  "stopped by ASCOB" and whether the stop was forced     (ASCOB, before a signal)
    result.json   exit code or signal, timeout, start error   (the runner, once the command ended)

Every JSON file is written atomically (temporary file + ``os.replace``): a reader sees the whole
file or none. A process is named by its pid *and* its start time (field 22 of
``/proc/<pid>/stat``, in clock ticks since boot), so a pid reused by another process is told apart.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "COMMAND",
    "JOB",
    "OUTPUT",
    "RESULT",
    "RUNNER",
    "STOPPED",
    "process_alive",
    "read_json",
    "start_time",
    "write_json",
]

JOB = "job.json"
RUNNER = "runner.json"
COMMAND = "command.json"
OUTPUT = "output.log"
STOPPED = "stopped.json"
RESULT = "result.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The file's content, or None if it does not exist (or is not a JSON object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name, which may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time (field 22 of /proc/<pid>/stat), None if there is no such pid."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])  # field 22; fields[0] is field 3 (state)


def process_alive(pid: int, started: int) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` and has not exited
    (a zombie, exited but not yet reaped by its parent, counts as ended)."""
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return False
    return int(fields[19]) == started and fields[0] not in ("Z", "X", "x")
