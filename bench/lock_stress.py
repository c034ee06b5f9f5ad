"""The lock stress test at full size: ``python -m bench.lock_stress [--runs 300] [pytest args]``.

CI runs ``tests/test_lock_stress.py`` small (75 runs on etcd v3, 25 on the SQL and etcd v2
stores); this runs the same proof at the size it was written for (300 and 100) or any other,
with the same checker: per key, no two jobs at once and fencing tokens in the order the jobs ran.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="runs on etcd v3 (a third elsewhere)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the runs to end")
    args, rest = parser.parse_known_args(argv)
    env = {**os.environ, "ASCOB_STRESS_RUNS": str(args.runs)}
    if args.budget is not None:
        env["ASCOB_STRESS_BUDGET"] = str(args.budget)
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
    command += ["tests/test_lock_stress.py", *rest]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
