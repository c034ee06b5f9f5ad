"""A real etcd (Debian's ``etcd-server``) on loopback, with the v2 API enabled, for the tests:
one member (:class:`EtcdServer`), or a cluster of several (:class:`EtcdCluster`)."""

from __future__ import annotations

import base64
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

    def __init__(self, workdir: Path, binary: str, name: str = "ascob-test") -> None:
        self.binary = binary
        self.name = name
        # the members of the cluster this one starts with; None: a cluster of one
        self.initial_cluster: str | None = None
        self.data = workdir / f"etcd-{free_port()}"
        self.data.mkdir(parents=True, exist_ok=True)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.log = self.data / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def launch(self) -> None:
        """Start the process without waiting (a cluster member is healthy only with quorum)."""
        peer = self.peer_url
        args = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data / "data"),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster or f"{self.name}={peer}",
            "--enable-v2=true",
        ]  # fmt: skip
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT)

    def start(self, timeout: float = 30.0) -> EtcdServer:
        self.launch()
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

    def kill(self) -> None:
        """SIGKILL (as a crash would); the data stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> EtcdServer:
        self.stop()
        return self.start()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class EtcdCluster:
    """``size`` etcd members on loopback forming one cluster; ``url`` lists every member's
    client URL, comma-separated, as ``ASCOB_ETCD_URL`` takes it."""

    def __init__(self, workdir: Path, binary: str, size: int = 3) -> None:
        self.members = [EtcdServer(workdir, binary, name=f"member{i}") for i in range(size)]
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = cluster
        self.url = ",".join(m.url for m in self.members)

    def start(self, timeout: float = 60.0) -> EtcdCluster:
        for member in self.members:
            member.launch()
        try:
            wait_until(
                lambda: (
                    all(m.healthy() for m in self.members)
                    or any(m.proc is None or m.proc.poll() is not None for m in self.members)
                ),
                timeout,
                "the etcd cluster",
            )
        except AssertionError:
            pass
        if not all(m.healthy() for m in self.members):
            self.stop()
            raise AssertionError("etcd cluster did not start:\n" + self.tail())
        return self

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def tail(self, n: int = 20) -> str:
        return "\n".join(f"--- {m.name} ---\n{m.tail(n)}" for m in self.members)

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, read from a live member (v3 JSON gateway)."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = {
            "key": base64.b64encode(prefix.encode()).decode(),
            "range_end": base64.b64encode(end.encode()).decode(),
            "keys_only": True,
        }
        for member in self.members:
            if member.proc is None:
                continue
            try:
                r = httpx.post(member.url + "/v3/kv/range", json=body, timeout=5)
            except httpx.HTTPError:
                continue
            r.raise_for_status()
            return [base64.b64decode(kv["key"]).decode() for kv in r.json().get("kvs", [])]
        raise AssertionError("no etcd member answers")
