"""A stand-in for an operator's script, run by ``commandBackend`` in the tests.

    python tests/fakes/command_job.py [--outcome succeeded|failed|hang|exit:N]
        [--lines a,b,c] [--interval S] [--delay S] [--marker FILE] [--child-pid-file FILE]
        [--ignore-term]

It prints its parameters (``NAME=value`` for every ``ASCOB_PARAM_NAME``), ``ASCOB_RUN_ID=…``, then
the lines one at a time ``--interval`` seconds apart, then ends as ``--outcome`` says (``hang``:
sleeps until killed). The parameter ``OUTCOME`` overrides ``--outcome``. ``--marker`` appends one
line per start (how tests count "started once"); ``--child-pid-file`` starts a ``sleep`` child in
the same process group and records its pid (to see the whole group stopped); ``--ignore-term``
ignores SIGTERM (only a forced stop ends it).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--outcome", default="succeeded")
    parser.add_argument("--lines", default="first line,second line,third line")
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--marker")
    parser.add_argument("--child-pid-file")
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.marker:
        with open(args.marker, "a") as fh:
            fh.write(f"{os.environ.get('ASCOB_RUN_ID')} {os.getpid()}\n")
    if args.child_pid_file:
        child = subprocess.Popen(["sleep", "600"])
        with open(args.child_pid_file, "w") as fh:
            fh.write(str(child.pid))
    time.sleep(args.delay)
    for name, value in sorted(os.environ.items()):
        if name.startswith("ASCOB_PARAM_"):
            print(f"{name.removeprefix('ASCOB_PARAM_')}={value}", flush=True)
    print(f"ASCOB_RUN_ID={os.environ.get('ASCOB_RUN_ID')}", flush=True)
    print(f"ASCOB_WEBHOOK_ID={os.environ.get('ASCOB_WEBHOOK_ID')}", flush=True)
    for line in args.lines.split(","):
        print(line, flush=True)
        time.sleep(args.interval)
    outcome = os.environ.get("ASCOB_PARAM_OUTCOME", args.outcome)
    if outcome == "hang":
        while True:
            time.sleep(1)
    if outcome == "failed":
        print("something went wrong", file=sys.stderr, flush=True)
        return 3
    if outcome.startswith("exit:"):
        return int(outcome.removeprefix("exit:"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
