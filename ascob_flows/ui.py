"""What the Prefect UI shows of an ASCOB run, written so that it never slows the run down.

- The flow run is named ``ascob-<runId> <description>`` (:func:`flow_run_name`, given when the
  flow run is created) and ends in a state named after the ASCOB status (:func:`final_state`).
- While the run is live, the flow run's state name mirrors the ASCOB status (Running
  "WaitingLocks", "Submitted", ...).
- One markdown artifact per run links the backend's job page and names the ASCOB run's REST
  requests (they need the ``X-Api-Token`` header, so the browser link is the API's docs page);
  when the run is over it also shows the end of the job's output.

A :class:`RunView` per flow run writes the live part in the background, at most once per
``settle`` seconds and only the latest state name: every write is a write on the Prefect server,
whose writes bound how fast runs start (docs/benchmarks.md), and a job that ends within the
settle time needs none of them. So a short run costs one artifact and its final state; a long one
shows each status it stays in. The flow closes the view before its final state: a pending name
is dropped (the final state replaces it), a write in flight is waited for (so it cannot land
after the final state), and the artifact is created, or updated with the output.

A resumed flow run (handed back by a stopping executor, or taken over from a dead one: its run
count is above 1) keeps its one artifact: the view looks for the artifact of the earlier run
and updates it instead of adding a second one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.states import Cancelled, Completed, Failed, Running, State

from ascob_flows.ports import RunRecord
from ascob_flows.status import RunStatus

log = logging.getLogger(__name__)

STATE_NAMES = {
    RunStatus.WAITING_LOCKS: "WaitingLocks",
    RunStatus.PENDING_SUBMIT: "PendingSubmit",
    RunStatus.SUBMITTED: "Submitted",
    RunStatus.RUNNING: "Running",
    RunStatus.ABORTING: "Aborting",
}


def flow_run_name(run_id: int, description: str | None) -> str:
    """``ascob-<runId>``, then the description: readable in the Prefect UI's run list."""
    text = " ".join((description or "").split())
    return f"ascob-{run_id}" + (f" {text[:80]}" if text else "")


def final_state(rec: RunRecord, message: str | None = None) -> State[Any]:
    """The flow run's final state for a final ASCOB run."""
    text = f"ASCOB run {rec.id}: {rec.status.value}" + (f" ({message})" if message else "")
    if rec.status is RunStatus.SUCCEDED:
        return Completed(message=text, name="Succeeded")
    if rec.status is RunStatus.ABORTED:
        return Cancelled(message=text, name="Aborted")
    if rec.status is RunStatus.IN_DOUBT:
        return Failed(message=text, name="InDoubt")
    return Failed(message=text)


def link_markdown(rec: RunRecord, job_url: str | None, public_url: str | None) -> str:
    """The artifact's first part: where the job and the ASCOB run can be seen."""
    lines = [f"# ASCOB run {rec.id}", "", f"* backend: `{rec.backend_id}`"]
    if job_url:
        lines.append(f"* backend job: [{job_url}]({job_url})")
    if public_url:
        # the REST API answers only requests with a token header, which a browser link does
        # not send: show the requests as text, and link the API's docs page, which opens in a
        # browser and sends them once a token is entered under "Authorize"
        base = public_url.rstrip("/")
        api = f"{base}/api/runs/{rec.id}"
        lines.append(
            f"* ASCOB run: `GET {api}` (output: `GET {api}/output.txt`), with the header "
            f"`X-Api-Token`; in a browser: [{base}/docs]({base}/docs), Authorize, then "
            "`GET /api/runs/{runId}`"
        )
    keys = ", ".join(f"`{k}={v}`" for k, v in rec.identification_keys.items() if k != "output")
    lines.append(f"* identification keys: {keys}")
    return "\n".join(lines)


def output_markdown(rec: RunRecord, text: str) -> str:
    """The artifact's last part, once the run is over."""
    return f"## Output of ASCOB run {rec.id} ({rec.status.value})\n\n```\n{text}\n```"


class RunView:
    """The live part of one flow run's page in the Prefect UI (see the module docstring)."""

    settle = 1.0  # seconds between two writes, and before the first
    flush_limit = 30.0  # seconds :meth:`close` waits for a write in flight

    def __init__(
        self, client: PrefectClient, flow_run_id: UUID, run_id: int, resumed: bool = False
    ) -> None:
        self.client, self.flow_run_id, self.run_id = client, flow_run_id, run_id
        self.resumed = resumed  # an earlier run of this flow run may have made the artifact
        self._name: str | None = None  # the latest state name asked for
        self._shown: str | None = "Running"  # the last one shown: the engine's, at first
        self._link: str | None = None
        self._link_sent = False
        self._artifact: UUID | None = None
        self._closing = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    def show_status(self, status: RunStatus) -> None:
        name = STATE_NAMES.get(status)
        if name is not None:
            self._name = name
            self._wake()

    def show_link(self, markdown: str) -> None:
        if self._link is None:
            self._link = markdown
            self._wake()

    def _wake(self) -> None:
        if self._writer is None and not self._closing.is_set():
            self._writer = asyncio.create_task(self._write_settled(), name="ascob-ui")

    async def _write_settled(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._closing.wait(), self.settle)
                return  # closing: what is pending is close()'s
            except TimeoutError:
                pass
            name = self._name if self._name != self._shown else None
            link = self._link if not self._link_sent else None
            if name is None and link is None:
                self._writer = None
                return
            if name is not None:
                self._shown = name
                # not forced: Prefect refuses it once the flow run is Cancelling (Cancel pressed
                # in the UI) or final, so a late name never hides a cancellation
                await self._quietly(
                    f"state {name}",
                    self.client.set_flow_run_state(
                        self.flow_run_id, Running(name=name), force=False
                    ),
                )
            if link is not None:
                self._link_sent = True  # tried once; close() creates it if that failed
                await self._quietly("the artifact", self._create(link))

    async def close(self, output: str | None) -> None:
        """Stop live updates; write the artifact with the output (markdown), if any."""
        self._closing.set()
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer, self.flush_limit)
            except TimeoutError:
                log.warning(
                    "run %s: gave up a Prefect UI update after %.0f s",
                    self.run_id,
                    self.flush_limit,
                )
        if output is None:
            if self._link is None or self._artifact is not None:
                return
            text = self._link
        else:
            text = "\n\n".join(part for part in (self._link, output) if part)
        if self._artifact is None:
            await self._quietly("the artifact", self._create(text))
        else:
            update = ArtifactUpdate(data=text)
            await self._quietly("the artifact", self.client.update_artifact(self._artifact, update))

    async def _create(self, markdown: str) -> None:
        if self.resumed and self._artifact is None:
            self.resumed = False
            earlier = await self.client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[self.flow_run_id])
                ),
                limit=1,
            )
            if earlier:
                self._artifact = earlier[0].id
                if self._link is None:  # the links were shown by the earlier run: keep them
                    links = str(earlier[0].data or "").split("\n\n## Output of ")[0]
                    markdown = "\n\n".join(part for part in (links, markdown) if part)
                await self.client.update_artifact(self._artifact, ArtifactUpdate(data=markdown))
                return
        artifact = await self.client.create_artifact(
            ArtifactCreate(
                type="markdown",
                data=markdown,
                description=f"ASCOB run {self.run_id}",
                flow_run_id=self.flow_run_id,
            )
        )
        self._artifact = artifact.id

    async def _quietly(self, what: str, update: Awaitable[Any]) -> None:
        try:
            await update
        except Exception as exc:  # cosmetic: never fail a run for it
            log.debug("run %s: could not show %s in Prefect: %r", self.run_id, what, exc)


_view: ContextVar[RunView | None] = ContextVar("ascob_run_view", default=None)


def open_view(client: Any, flow_run_id: UUID | None, run_id: int) -> RunView | None:
    """The view of the current flow run (None outside a Prefect flow run)."""
    if not isinstance(client, PrefectClient) or flow_run_id is None:
        return None
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    flow_run = ctx.flow_run if ctx is not None else None
    resumed = flow_run is not None and flow_run.id == flow_run_id and flow_run.run_count > 1
    view = RunView(client, flow_run_id, run_id, resumed=resumed)
    _view.set(view)
    return view


def current_view() -> RunView | None:
    return _view.get()
