"""``commandBackend``: runs a command on the ASCOB host (an Ansible playbook, a shell script).

Configuration (section ``[command.<instance>]`` of the ``ASCOB_CONFIG`` TOML file)::

    [command.deploy]
    argv = ["ansible-playbook", "-i", "inventory", "deploy.yml"]   # a list: no shell
    workdir = "/srv/playbooks"          # default: the job's own directory
    env = { ANSIBLE_FORCE_COLOR = "0" } # extra environment variables
    pass_env = ["VAULT_TOKEN"]          # variables copied from ASCOB's environment (secrets)
    timeout_seconds = 3600              # default: no limit

Labels: ``command_instance`` (may be left out when one instance is configured).

The command gets a small environment, not ASCOB's (which holds ASCOB's own secrets): ``PATH``,
``HOME``, ``LANG``, ``LC_ALL``, ``TZ``, ``USER``, ``LOGNAME``, ``TMPDIR`` when set, then ``env``,
then ``pass_env``, then ``ASCOB_PARAM_<name>`` for every job parameter (names of letters, digits
and underscores only, else the submission is refused), ``ASCOB_RUN_ID`` and ``ASCOB_WEBHOOK_ID``.

How a job is run and found again (see ``jobdir`` and ``runner``): ``submit`` writes the job
directory ``<data_dir>/jobs/<runId>-<nonce>/`` (the nonce is recorded before anything starts),
then starts ``python -m backends.command.runner <job-dir>``, which forks off into a new session
(so it is nobody's child and outlives ASCOB) and records its pid and start time. It starts
the command, waits for it, and writes its exit code to the job directory. Status, output and stop
read and signal through that directory, so a restarted ASCOB re-attaches without starting the
command again. A second ``submit`` for the same run id answers the job already started.

Identification keys: ``commandJobDir`` (relative to the data dir), ``commandPid`` and
``commandStartTime`` (the runner's pid and start time), ``commandHost`` and ``commandInstance``.
Only the host that started a job can follow it: elsewhere the job is unknown (``JobNotFound``).

Exceptions: :class:`InvalidParameter` (a parameter name that is no environment variable name) is
both a :class:`SpecRejected` and a :class:`SubmitRefused`: it is raised by ``submit``, where the
engine fails the run with the message.
"""

from __future__ import annotations

__all__ = ["CommandBackend", "InvalidParameter"]

import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from backends import kit
from backends.command.jobdir import (
    COMMAND,
    JOB,
    OUTPUT,
    RESULT,
    RUNNER,
    STOPPED,
    process_alive,
    read_json,
    write_json,
)

log = logging.getLogger(__name__)

INSTANCE_LABEL = "command_instance"
PARAMETER_NAME = re.compile(r"[A-Za-z0-9_]+")
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR")
MAX_CHUNK = 1 << 20  # bytes of output per call
RUNNER_START_TIMEOUT = 30.0  # seconds for the runner to fork off and record itself
STARTING_WAIT = 5.0  # seconds a second submit waits for the runner an earlier one started


class InvalidParameter(kit.SpecRejected, kit.SubmitRefused):
    """A parameter name cannot be an environment variable name: the job is not started."""


@dataclass(frozen=True)
class Instance:
    name: str
    argv: tuple[str, ...]
    workdir: str | None
    env: Mapping[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = ()
    timeout_seconds: float = 0.0

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any]) -> Instance:
        where = f"[command.{name}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be a table")
        argv = raw.get("argv")
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) for a in argv)
            or not argv[0]
        ):
            raise ValueError(f"{where} needs argv, a non-empty list of strings (no shell)")
        env = raw.get("env", {})
        if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and PARAMETER_NAME.fullmatch(k) and isinstance(v, str | int | float)
            for k, v in env.items()
        ):
            raise ValueError(f"{where} env must be a table of NAME = value")
        pass_env = raw.get("pass_env", [])
        if not isinstance(pass_env, list) or not all(isinstance(v, str) for v in pass_env):
            raise ValueError(f"{where} pass_env must be a list of variable names")
        workdir = raw.get("workdir")
        if workdir is not None and not isinstance(workdir, str):
            raise ValueError(f"{where} workdir must be a path")
        timeout = raw.get("timeout_seconds", 0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ValueError(f"{where} timeout_seconds must be a number of seconds >= 0")
        unknown = set(raw) - {"argv", "workdir", "env", "pass_env", "timeout_seconds"}
        if unknown:
            raise ValueError(f"{where} has unknown settings: {', '.join(sorted(unknown))}")
        return cls(
            name=name,
            argv=tuple(argv),
            workdir=workdir,
            env={k: str(v) for k, v in env.items()},
            pass_env=tuple(pass_env),
            timeout_seconds=float(timeout),
        )


def _decode(data: bytes, final: bool) -> tuple[str, int]:
    """Text of ``data`` and the bytes it used: an incomplete UTF-8 character at the end waits
    for the next call, unless nothing more will come."""
    if not final:
        for cut in range(4):
            try:
                return data[: len(data) - cut].decode("utf-8"), len(data) - cut
            except UnicodeDecodeError:
                continue
    return data.decode("utf-8", errors="replace"), len(data)


class CommandBackend(kit.Backend):
    id: ClassVar[str] = "commandBackend"
    config_section: ClassVar[str] = "command"
    can_stop: ClassVar[bool] = True

    def __init__(self, context: kit.BackendContext) -> None:
        super().__init__(context)
        self.instances = kit.Instances("command", context.instances, Instance.parse)
        self.host = socket.gethostname()

    @property
    def jobs_dir(self) -> Path:
        return Path(self.context.data_dir) / "jobs"

    # ------------------------------------------------------------------ spec

    def accepts(self, labels: Mapping[str, str], description: str | None) -> bool:
        return INSTANCE_LABEL in labels

    def validate(self, labels: Mapping[str, str]) -> None:
        self.instances.for_labels(labels)

    @property
    def broken_instances(self) -> Mapping[str, str]:
        return self.instances.broken

    # ------------------------------------------------------------------ submit

    def _environment(self, inst: Instance, job: kit.Job) -> dict[str, str]:
        env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
        env.update(inst.env)
        env.update({k: os.environ[k] for k in inst.pass_env if k in os.environ})
        bad = sorted(k for k in job.parameters if not PARAMETER_NAME.fullmatch(k))
        if bad:
            raise InvalidParameter(
                f"parameter names must be letters, digits and underscores (they become "
                f"environment variables ASCOB_PARAM_<name>): {', '.join(map(repr, bad))}"
            )
        for key, value in job.parameters.items():
            if "\0" in value:
                raise InvalidParameter(f"parameter {key!r} contains a NUL character")
            env[f"ASCOB_PARAM_{key}"] = value
        env["ASCOB_RUN_ID"] = str(job.run_id)
        env["ASCOB_WEBHOOK_ID"] = job.webhook_id
        return env

    def _check_program(self, inst: Instance, env: Mapping[str, str]) -> str | None:
        """The workdir, after checking it and the program exist (else SubmitRefused)."""
        workdir = inst.workdir
        if workdir is not None and not Path(workdir).is_dir():
            raise kit.SubmitRefused(f"command {inst.name!r}: workdir {workdir} is not a directory")
        program = inst.argv[0]
        if "/" in program:
            path = Path(workdir or ".", program) if not Path(program).is_absolute() else None
            found = Path(program) if path is None else path
            ok = found.is_file() and os.access(found, os.X_OK)
        else:
            ok = shutil.which(program, path=env.get("PATH", os.defpath)) is not None
        if not ok:
            raise kit.SubmitRefused(
                f"command {inst.name!r}: {program!r} is not an executable file"
                + ("" if "/" in program else f" on PATH {env.get('PATH', os.defpath)}")
            )
        return workdir

    def _keys(self, inst_name: str, job_dir: Path, pid: int, started: int) -> dict[str, str]:
        return {
            "commandInstance": inst_name,
            "commandJobDir": str(job_dir.relative_to(self.context.data_dir)),
            "commandPid": str(pid),
            "commandStartTime": str(started),
            "commandHost": self.host,
        }

    async def _earlier_start(self, job: kit.Job) -> dict[str, str] | None:
        """The keys of the job an earlier submit of this run started, if any."""
        if not self.jobs_dir.is_dir():
            return None
        for job_dir in sorted(self.jobs_dir.glob(f"{job.run_id}-*")):
            spec = read_json(job_dir / JOB)
            if spec is None or spec.get("run_id") != job.run_id:
                continue
            waited = 0.0
            while (runner := read_json(job_dir / RUNNER)) is None and waited < STARTING_WAIT:
                await asyncio.sleep(0.1)
                waited += 0.1
            if runner is None or runner.get("start_time") is None:
                raise RuntimeError(
                    f"run {job.run_id} was started before in {job_dir} but its runner never "
                    "recorded itself: outcome unknown, not starting it twice"
                )
            log.info("run %s: already started in %s, not starting it again", job.run_id, job_dir)
            return self._keys(
                str(spec.get("instance")), job_dir, int(runner["pid"]), int(runner["start_time"])
            )
        return None

    async def submit(self, job: kit.Job) -> dict[str, str]:
        self.validate(job.labels)
        inst = self.instances.for_labels(job.labels)
        env = self._environment(inst, job)
        earlier = await self._earlier_start(job)
        if earlier is not None:
            return earlier
        workdir = self._check_program(inst, env)
        job_dir = self.jobs_dir / f"{job.run_id}-{uuid.uuid4().hex[:12]}"
        try:
            job_dir.mkdir(parents=True, mode=0o700)
            (job_dir / OUTPUT).touch(mode=0o600)
            write_json(
                job_dir / JOB,
                {
                    "run_id": job.run_id,
                    "instance": inst.name,
                    "host": self.host,
                    "argv": list(inst.argv),
                    "workdir": workdir or str(job_dir),
                    "env": env,
                    "timeout_seconds": inst.timeout_seconds,
                },
            )
        except OSError as exc:
            raise kit.SubmitRefused(f"cannot prepare the job directory {job_dir}: {exc}") from exc
        try:
            code = await asyncio.to_thread(self._start_runner, job_dir)
        except OSError as exc:
            raise kit.SubmitRefused(f"cannot start the command runner: {exc}") from exc
        runner = read_json(job_dir / RUNNER)
        if code != 0 or runner is None or runner.get("start_time") is None:
            if runner is None:  # the runner never forked off: nothing was started
                raise kit.SubmitRefused(f"the command runner failed to start (exit code {code})")
            raise RuntimeError(f"the command runner answered {code}; outcome unknown")
        log.info("run %s: command %r started in %s", job.run_id, inst.name, job_dir)
        return self._keys(inst.name, job_dir, int(runner["pid"]), int(runner["start_time"]))

    @staticmethod
    def _start_runner(job_dir: Path) -> int:
        """Start the runner; it answers (exits) once its forked-off self has recorded itself."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "backends.command.runner", str(job_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        try:
            return proc.wait(timeout=RUNNER_START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"the command runner did not answer within {RUNNER_START_TIMEOUT:g} s; "
                "outcome unknown"
            ) from None

    # ------------------------------------------------------------------ follow

    def _job_dir(self, keys: Mapping[str, str]) -> Path:
        rel = keys.get("commandJobDir", "")
        base = Path(self.context.data_dir).resolve()
        job_dir = (base / rel).resolve()
        if not rel or base not in job_dir.parents:
            raise kit.JobNotFound(f"identification keys name no command job directory ({rel!r})")
        if not (job_dir / JOB).is_file():
            host = keys.get("commandHost", "another host")
            raise kit.JobNotFound(
                f"no job directory {rel} here (on {self.host}); the job was started on {host}"
            )
        return job_dir

    def _runner_alive(self, keys: Mapping[str, str], job_dir: Path) -> bool:
        try:
            pid = int(keys["commandPid"])
            started = int(keys["commandStartTime"])
        except (KeyError, ValueError):
            runner = read_json(job_dir / RUNNER) or {}
            pid, started = int(runner.get("pid") or 0), int(runner.get("start_time") or -1)
        return process_alive(pid, started)

    def _result(self, job_dir: Path) -> kit.StatusReport | None:
        result = read_json(job_dir / RESULT)
        if result is None:
            return None
        if result.get("error"):
            return kit.StatusReport(kit.BackendStatus.FAILED, str(result["error"]))
        stopped = read_json(job_dir / STOPPED)
        if result.get("timed_out") is not None:
            return kit.StatusReport(
                kit.BackendStatus.FAILED, f"timed out after {result['timed_out']:g} s (stopped)"
            )
        sig = result.get("signal")
        how = "exit code 0" if sig is None else f"killed by {_signal_name(int(sig))}"
        if sig is None and result.get("exit_code") is not None:
            how = f"exit code {result['exit_code']}"
        if stopped is not None:
            forced = "forced stop" if stopped.get("force") else "stop"
            return kit.StatusReport(
                kit.BackendStatus.ABORTED, f"stopped by ASCOB ({forced}; {how})"
            )
        if sig is not None:
            return kit.StatusReport(kit.BackendStatus.FAILED, how)
        if result.get("exit_code") == 0:
            return kit.StatusReport(kit.BackendStatus.SUCCEEDED, None)
        return kit.StatusReport(kit.BackendStatus.FAILED, how)

    def _finished(self, keys: Mapping[str, str], job_dir: Path) -> kit.StatusReport | None:
        """The final report, or None while the runner is still alive."""
        report = self._result(job_dir)
        if report is not None:
            return report
        if keys.get("commandHost", self.host) != self.host:
            raise kit.JobNotFound(
                f"the command runs on host {keys['commandHost']}, this ASCOB is on {self.host}"
            )
        if self._runner_alive(keys, job_dir):
            return None
        # it may have written its result just before it ended
        return self._result(job_dir) or kit.StatusReport(
            kit.BackendStatus.FAILED, "the runner died without an exit code"
        )

    async def status(self, keys: Mapping[str, str]) -> kit.StatusReport:
        job_dir = self._job_dir(keys)
        report = self._finished(keys, job_dir)
        if report is not None:
            return report
        command = read_json(job_dir / COMMAND)
        pid = f"pid {command['pid']}" if command else "starting"
        return kit.StatusReport(kit.BackendStatus.RUNNING, f"running on {self.host} ({pid})")

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        job_dir = self._job_dir(keys)
        if self._finished(keys, job_dir) is not None:
            return
        write_json(job_dir / STOPPED, {"force": force})
        command = read_json(job_dir / COMMAND)
        if command is None:
            return  # the runner reads stopped.json right after it starts the command
        pid = int(command["pid"])
        sig = signal.SIGKILL if force else signal.SIGTERM
        # The runner has not reaped the command (no result yet), so its pid and process group
        # are still the command's: no other process can have taken them over.
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        log.info("command job %s: sent %s to process group %s", job_dir.name, sig.name, pid)

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> kit.OutputChunk:
        job_dir = self._job_dir(keys)
        final = self._finished(keys, job_dir) is not None  # before reading: nothing is missed
        try:
            with (job_dir / OUTPUT).open("rb") as fh:
                fh.seek(offset)
                data = fh.read(MAX_CHUNK)
                rest = bool(fh.read(1))
        except FileNotFoundError:
            return kit.OutputChunk("", offset, not final)
        text, used = _decode(data, final and not rest)
        return kit.OutputChunk(text, offset + used, rest or not final)


def _signal_name(number: int) -> str:
    try:
        return f"signal {signal.Signals(number).name} ({number})"
    except ValueError:
        return f"signal {number}"
