"""The soak, short (issue 16; docs/reliability.md): a few hundred runs through the whole
topology while every fault kind strikes once, checked from the backends' own records.

The full-size soak is ``python -m bench.soak --runs 2000``; this one runs it small (120 runs,
about 4 minutes here), and fails on anything the checker finds: a run lost or duplicated, a lock
violation, a final status that its backend or its Prefect flow run contradicts, a lock left
behind. It is part of ``.ci/run``; ``ASCOB_SOAK_RUNS`` and ``ASCOB_SOAK_SEED`` change its size
and seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak.faults import KINDS
from tests.etcd_server import etcd_binary
from tests.harness import ROOT
from tests.postgres_server import require_bindir

pytestmark = pytest.mark.system


def test_short_soak_with_every_fault_kind(tmp_path: Path) -> None:
    if etcd_binary() is None:
        message = "no etcd binary (apt-get install etcd-server, or set ASCOB_TEST_ETCD)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    require_bindir()
    report = tmp_path / "report.json"
    args = [
        sys.executable,
        "-m",
        "bench.soak",
        "--runs",
        os.environ.get("ASCOB_SOAK_RUNS", "120"),
        "--rate",
        "1.0",
        "--fault-interval",
        "4",
        "--seed",
        os.environ.get("ASCOB_SOAK_SEED", "7"),
        "--workdir",
        str(tmp_path / "soak"),
        "--out",
        str(report),
    ]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=3000)
    tail = "\n".join(done.stdout.splitlines()[-400:]) + "\n" + done.stderr[-3000:]
    assert done.returncode == 0, tail
    rep = json.loads(report.read_text())
    assert set(rep["faults"]) == set(KINDS), rep["faults"]
    for finding in ("lost", "duplicated", "lock_violations", "status_mismatches"):
        assert rep[finding] == [], (finding, rep[finding])
    assert rep["prefect_mismatches"] == [] and rep["leftovers"] == [], tail
    last = done.stdout.strip().splitlines()[-1]
    faults = sum(rep["faults"].values())
    assert last.startswith(f"soak: {rep['runs']} runs, {faults} faults, 0 lost, 0 duplicated"), last
    print("\n" + tail)
