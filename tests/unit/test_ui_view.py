"""What a run's view sends to the Prefect server (ascob_flows/ui.py), against a recording client:
the latest state name at most once per settle time, one artifact per run, nothing after close."""

from __future__ import annotations

import asyncio
from typing import Any, cast
from uuid import UUID, uuid4

from ascob_flows.status import RunStatus
from ascob_flows.ui import RunView


class RecordingClient:
    """Stands in for PrefectClient: records the writes, each taking ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[tuple[str, Any]] = []

    async def set_flow_run_state(self, flow_run_id: UUID, state: Any, force: bool) -> None:
        await asyncio.sleep(self.delay)
        assert not force  # a late name must never override a Cancelling or final state
        self.calls.append(("state", state.name))

    async def create_artifact(self, artifact: Any) -> Any:
        await asyncio.sleep(self.delay)
        self.calls.append(("create", artifact.data))
        return type("Created", (), {"id": uuid4()})()

    async def update_artifact(self, artifact_id: UUID, update: Any) -> None:
        await asyncio.sleep(self.delay)
        self.calls.append(("update", update.data))


def view_of(client: RecordingClient, settle: float) -> RunView:
    view = RunView(cast(Any, client), uuid4(), 7)
    view.settle = settle
    return view


async def test_a_short_run_costs_one_artifact_and_no_state_name() -> None:
    client = RecordingClient()
    view = view_of(client, settle=0.5)
    view.show_status(RunStatus.SUBMITTED)
    view.show_link("links")
    view.show_status(RunStatus.RUNNING)
    await view.close("output")
    assert client.calls == [("create", "links\n\noutput")]


async def test_a_long_run_shows_its_latest_state_name_then_updates_its_artifact() -> None:
    client = RecordingClient()
    view = view_of(client, settle=0.05)
    view.show_status(RunStatus.WAITING_LOCKS)
    view.show_status(RunStatus.SUBMITTED)  # replaces WaitingLocks before it was sent
    view.show_link("links")
    await asyncio.sleep(0.3)
    assert client.calls == [("state", "Submitted"), ("create", "links")]
    view.show_status(RunStatus.RUNNING)
    await asyncio.sleep(0.3)
    assert client.calls[-1] == ("state", "Running")
    view.show_status(RunStatus.RUNNING)  # unchanged: nothing more to send
    await asyncio.sleep(0.3)
    await view.close("output")
    assert client.calls[2:] == [("state", "Running"), ("update", "links\n\noutput")]


async def test_running_is_not_written_over_the_engines_running_state() -> None:
    client = RecordingClient()
    view = view_of(client, settle=0.05)
    view.show_status(RunStatus.SUBMITTED)
    view.show_status(RunStatus.RUNNING)  # before the first write: the flow run says Running
    await asyncio.sleep(0.3)
    assert client.calls == []
    await view.close(None)
    assert client.calls == []


async def test_close_waits_for_a_write_in_flight_and_drops_what_is_pending() -> None:
    client = RecordingClient(delay=0.3)
    view = view_of(client, settle=0.05)
    view.show_status(RunStatus.SUBMITTED)
    await asyncio.sleep(0.15)  # the state name is being written
    view.show_status(RunStatus.RUNNING)  # pending: the final state replaces it
    await view.close(None)
    # the in-flight name landed before close returned (so before the final state), no more
    assert client.calls == [("state", "Submitted")]
    await asyncio.sleep(0.5)
    assert client.calls == [("state", "Submitted")]


async def test_a_run_never_dispatched_has_no_artifact() -> None:
    client = RecordingClient()
    view = view_of(client, settle=0.05)
    view.show_status(RunStatus.WAITING_LOCKS)
    await asyncio.sleep(0.2)
    await view.close(None)
    assert client.calls == [("state", "WaitingLocks")]


async def test_a_resumed_flow_run_keeps_its_one_artifact_and_its_links() -> None:
    """Handed back and resumed, the flow run's view updates the artifact the earlier run made
    (its links kept, the output added) instead of adding a second one."""
    earlier = uuid4()

    class Resumed(RecordingClient):
        async def read_artifacts(self, **_filters: Any) -> list[Any]:
            self.calls.append(("read", None))
            data = "# ASCOB run 7\n\n* backend job: [j](j)"
            return [type("Artifact", (), {"id": earlier, "data": data})()]

    client = Resumed()
    view = RunView(cast(Any, client), uuid4(), 7, resumed=True)
    await view.close("## Output of ASCOB run 7 (SUCCEDED)\n\nall good")
    assert [c[0] for c in client.calls] == ["read", "update"]
    text = client.calls[-1][1]
    assert text.startswith("# ASCOB run 7") and "all good" in text, text
