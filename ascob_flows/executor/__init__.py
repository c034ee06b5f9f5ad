"""The executor: runs flow runs of the ``ascob-job`` deployment in-process, as asyncio tasks.

Prefect's default runner starts a subprocess per flow run (seconds of CPU and 100+ MB each);
ASCOB's runs spend hours waiting on backends, so one executor holds them all in one event loop.
Its parts, one module each, each a small object whose ``run(client)`` is one supervised loop::

    host.Executor ─ thread + event loop, registers the deployment, heartbeat, leases, stop
     ├─ launcher.Launcher   recorded run without flow run ─► create it (idempotency key
     │                      ``ascob-run-<id>-…``; claimed at creation while there is room)
     ├─ claimer.Claimer     Scheduled flow run ─► propose Pending (Prefect accepts one proposer)
     ├─ gate.StartGate      every start: ``max_concurrent`` at once, ``start_rate`` per second,
     │                      claim recorded in the repository, the flow run as an asyncio task
     ├─ reaper.Reaper       run of a dead executor / unrecorded claim ─► Scheduled ("Resuming")
     ├─ canceller.Canceller Cancelling/Cancelled in the Prefect UI ─► stop the ASCOB run
     └─ queries.Queries     the flow run reads, all limited to this installation's deployment

- the **launcher** creates the flow run of every recorded run that has none yet (retried until
  Prefect answers: an outage delays runs, loses none);
- the **claimer** picks up Scheduled flow runs of the deployment and proposes Pending to the
  Prefect server; Prefect accepts that for one proposer only, so two executors never run the
  same flow run. Starts go through the **start gate**;
- the **heartbeat** (in the host) renews this executor's liveness row and drops the runs another
  executor took over; apart from it, the **lease renewal** renews its runs' lock leases;
- the **reaper** hands runs of dead executors (or of this executor's previous life) back to
  Prefect as Scheduled, so they are claimed again and carry on from the repository's state.

The executor runs in its own thread with its own event loop, so the API never waits on it.
"""

from __future__ import annotations

from ascob_flows.executor.host import Executor
from ascob_flows.executor.launcher import Launcher, launch_key
from ascob_flows.executor.queries import ensure_deployment
from ascob_flows.executor.support import Backoff, Stats

__all__ = ["Backoff", "Executor", "Launcher", "Stats", "ensure_deployment", "launch_key"]
