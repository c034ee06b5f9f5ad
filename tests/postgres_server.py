"""A throw-away PostgreSQL server for tests: Debian's ``postgresql`` package, on loopback.

``initdb`` into a temporary data folder, ``pg_ctl start`` on 127.0.0.1 and a random free port,
the unix socket in that folder too, trust authentication (loopback only), one database; stopped
(``pg_ctl stop -m immediate``) and deleted at teardown. PostgreSQL refuses to run as root, so
when the tests run as root every server command runs as the ``postgres`` user that the Debian
package creates (``runuser -u postgres --``).

:func:`find_bindir` looks for the server binaries; when they are missing, tests skip, except under
CI (the environment variable ``CI`` is set), where they fail: .ci/test installs the package.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness import free_port


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def find_bindir() -> Path | None:
    """The folder holding ``postgres``, ``initdb`` and ``pg_ctl``, newest major version first."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    for candidate in candidates:
        if all((Path(candidate) / name).exists() for name in ("postgres", "initdb", "pg_ctl")):
            return Path(candidate)
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb") and shutil.which("postgres"):
        return Path(on_path).resolve().parent
    return None


def require_bindir() -> Path:
    bindir = find_bindir()
    if bindir is None:
        message = (
            "PostgreSQL server binaries not found (Debian package `postgresql`; "
            "`apt-get install -y postgresql`, as .ci/test does)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return bindir


class PostgresServer:
    """One PostgreSQL cluster of a test session; ``url`` is an ``ASCOB_DATABASE_URL``."""

    def __init__(self, bindir: Path, database: str = "ascob") -> None:
        self.bindir = bindir
        self.database = database
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ascob-pg-"))
        self.datadir = self.root / "data"
        self.sockdir = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.user = "postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            # the server refuses to run as root: run it as the package's `postgres` user
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no `postgres` user") from None
            self._as = ["runuser", "-u", "postgres", "--"]
            os.chmod(self.root, 0o700)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str | Path, timeout: float = 120, stdin: str | None = None) -> str:
        cmd = [*self._as, *(str(a) for a in args)]
        done = subprocess.run(
            cmd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env(),
            cwd=self.root,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                + self.tail()
            )
        return done.stdout

    def _env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.setdefault("LANG", "C.UTF-8")
        return env

    def start(self) -> PostgresServer:
        self._run(
            self.bindir / "initdb",
            "-D",
            self.datadir,
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        self._mkdir(self.sockdir)
        self._launch()
        self.create_database(self.database)
        return self

    def _launch(self) -> None:
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.sockdir}",
                "-c max_connections=300",
                "-c fsync=off",
                "-c full_page_writes=off",
                "-c timezone=UTC",
            ]
        )
        self._run(
            self.bindir / "pg_ctl",
            "-D",
            self.datadir,
            "-l",
            self.log,
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self._wait_ready()

    def kill(self) -> None:
        """SIGKILL the server and every one of its processes at once (a crash, as the kernel's
        OOM killer or a lost container would do); the data folder stays for :meth:`restart`.
        Its committed transactions survive: a commit waits for its WAL to reach the OS
        (synchronous_commit stays on), and a process crash loses no write the OS has (fsync is
        off here, so an OS crash would)."""
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return
        postmaster = int(pidfile.read_text().split()[0])
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True
        ).stdout.split()
        for pid in [postmaster, *map(int, children)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            _alive(pid) for pid in [postmaster, *map(int, children)]
        ):
            time.sleep(0.05)
        # a killed postmaster may stay a zombie (its parent, often PID 1 here, does not reap
        # it), which PostgreSQL would take for a live server holding its lock files
        pidfile.unlink(missing_ok=True)
        for stale in self.sockdir.glob(f".s.PGSQL.{self.port}*"):
            stale.unlink(missing_ok=True)

    def restart(self) -> PostgresServer:
        """Start again on the same data and port (after :meth:`kill`: crash recovery runs)."""
        self._launch()
        return self

    def create_database(self, name: str) -> str:
        """One more database in this cluster; its ``postgresql://`` URL."""
        port = str(self.port)
        self._run(self.bindir / "createdb", "-h", self.sockdir, "-p", port, "-U", self.user, name)
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def sql_tool(
        self, tool: str, *args: str, database: str | None = None, stdin: str | None = None
    ) -> str:
        """Run one of the cluster's client programs (``psql``, ``pg_dump``...) on a database
        (this server's by default), over the unix socket; its standard output. ``stdin`` is fed
        to it (a file of the caller may not be readable by the ``postgres`` user)."""
        connection = ["-h", str(self.sockdir), "-p", str(self.port), "-U", self.user]
        return self._run(
            self.bindir / tool,
            *connection,
            "-d",
            database or self.database,
            *args,
            timeout=600,
            stdin=stdin,
        )

    def pid(self) -> int | None:
        """The postmaster's process id while the server runs."""
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _mkdir(self, path: Path) -> None:
        path.mkdir(mode=0o700, exist_ok=True)
        if self._as:
            owner = pwd.getpwnam("postgres")
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _wait_ready(self, timeout: float = 60) -> None:
        isready = self.bindir / "pg_isready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(isready), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if done.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("PostgreSQL did not become ready:\n" + self.tail())

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        try:
            if (self.datadir / "postmaster.pid").exists():
                self._run(self.bindir / "pg_ctl", "-D", self.datadir, "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
