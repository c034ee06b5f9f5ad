"""The tiny runner that stands between ASCOB and a command::

    python -m backends.command.runner <job-dir>

It forks into a session of its own (see :func:`daemonize`) and may outlive the ASCOB process
that started it, which then cannot ``waitpid`` the command any more. The runner can: it starts
the command (``argv``, ``workdir``, ``env`` and ``timeout_seconds`` from ``job.json``) in a
session of its own, with stdout and stderr appended to ``output.log``, waits for it, and writes
the exit code or the signal to ``result.json`` atomically. Anyone reading the job directory later
knows how the job ended.

The command gets a session (and process group) of its own, whose id is its pid, recorded in
``command.json``: ASCOB stops the job by signalling that group, which never reaches the runner,
so the runner always lives to record the outcome. SIGTERM, SIGINT and SIGHUP sent to the runner
are passed on to the command's group as SIGTERM. After ``timeout_seconds`` the runner sends the
group SIGTERM, then SIGKILL ``KILL_GRACE`` seconds later, and records the timeout.

The runner writes nothing to its own stdout/stderr; any trouble goes to ``output.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from backends.command.jobdir import (
    COMMAND,
    JOB,
    OUTPUT,
    RESULT,
    RUNNER,
    STOPPED,
    read_json,
    start_time,
    write_json,
)

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL at a timeout


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(job_dir: Path) -> int:
    job = read_json(job_dir / JOB)
    if job is None:
        return 2
    timeout = float(job.get("timeout_seconds") or 0)
    result: dict[str, Any] = {}
    with (job_dir / OUTPUT).open("ab", buffering=0) as out:
        try:
            proc = subprocess.Popen(
                [str(a) for a in job["argv"]],
                cwd=job.get("workdir") or None,
                env={str(k): str(v) for k, v in (job.get("env") or {}).items()},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            message = f"cannot start {job['argv'][0]!r}: {exc}"
            out.write(f"[ascob] {message}\n".encode())
            write_json(job_dir / RESULT, {"error": message, "ended": time.time()})
            return 127
        write_json(job_dir / COMMAND, {"pid": proc.pid, "start_time": start_time(proc.pid)})

        def forward(signum: int, frame: FrameType | None) -> None:
            _signal_group(proc.pid, signal.SIGTERM)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, forward)
        # A stop that came while the command was being started finds no command.json: honour it.
        stopped = read_json(job_dir / STOPPED)
        if stopped is not None:
            _signal_group(proc.pid, signal.SIGKILL if stopped.get("force") else signal.SIGTERM)
        try:
            returncode = proc.wait(timeout=timeout if timeout > 0 else None)
        except subprocess.TimeoutExpired:
            out.write(f"\n[ascob] timed out after {timeout:g} s: stopping the command\n".encode())
            result["timed_out"] = timeout
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                returncode = proc.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                returncode = proc.wait()
    if returncode < 0:
        result["signal"] = -returncode
    else:
        result["exit_code"] = returncode
    result["ended"] = time.time()
    write_json(job_dir / RESULT, result)
    return 0


def daemonize(job_dir: Path) -> int:
    """Fork: the child leaves for a session of its own and runs the job; the parent exits 0 as
    soon as the child has recorded its pid and start time in ``runner.json`` (1 otherwise).
    So the runner is nobody's child: it never becomes a zombie of a long-lived ASCOB, and it is
    followed the same way before and after an ASCOB restart."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_w)
        ok = os.read(ready_r, 1) == b"1"
        return 0 if ok else 1
    os.close(ready_r)
    code = 2
    try:
        os.setsid()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the command runs
        me = os.getpid()
        write_json(job_dir / RUNNER, {"pid": me, "start_time": start_time(me)})
        os.write(ready_w, b"1")
        os.close(ready_w)
        code = run(job_dir)
    finally:
        os._exit(code)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m backends.command.runner <job-dir>", file=sys.stderr)
        return 2
    job_dir = Path(argv[0])
    if read_json(job_dir / JOB) is None:
        print(f"no {JOB} in {job_dir}", file=sys.stderr)
        return 2
    return daemonize(job_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
