"""A real etcd (Debian's ``etcd-server``) on loopback, with the v2 API enabled, for the tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx

from tests.harness import free_port, wait_until

ETCD = os.environ.get("ASCOB_TEST_ETCD", "/usr/bin/etcd")


def etcd_binary() -> str | None:
    if Path(ETCD).is_file():
        return ETCD
    return shutil.which("etcd")


class EtcdServer:
    """One etcd member with a temporary data folder; ``stop()``/``start()`` keep the data."""

    def __init__(self, workdir: Path, binary: str) -> None:
        self.binary = binary
        self.data = workdir / f"etcd-{free_port()}"
        self.data.mkdir(parents=True, exist_ok=True)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.log = self.data / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> EtcdServer:
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.binary,
            "--name", "ascob-test",
            "--data-dir", str(self.data / "data"),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"ascob-test={peer}",
            "--enable-v2=true",
        ]  # fmt: skip
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT)
        wait_until(
            lambda: self.healthy() or self.proc is None or self.proc.poll() is not None,
            timeout,
            "etcd",
        )
        if not self.healthy():
            raise AssertionError("etcd did not start:\n" + self.tail())
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> EtcdServer:
        self.stop()
        return self.start()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
