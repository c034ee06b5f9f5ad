"""What the executor asks the Prefect server: its deployment, and the flow runs of it in a state.

Every read names the deployment. Installations that share a Prefect server may share a
deployment name too (``ascob-job`` by default), so each flow run a launcher creates carries the
installation's tag (``ascob-installation:<id>``, the identity kept in the repository), and
:meth:`Queries.owns` tells this installation's flow runs from the others'.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterNextScheduledStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.types._datetime import now as prefect_now

from ascob_flows.flow import DEPLOYMENT_NAME, ascob_job
from ascob_flows.runtime import Runtime

INSTALLATION_TAG = "ascob-installation:"


def installation_tag(installation: str) -> str:
    """The tag that marks the flow runs of one installation."""
    return INSTALLATION_TAG + installation


async def ensure_deployment(
    client: PrefectClient, name: str = DEPLOYMENT_NAME, flow: Flow[Any, Any] = ascob_job
) -> UUID:
    """Register the deployment ``ascob-job/<name>`` (idempotent) and return its id."""
    flow_id = await client.create_flow(flow)
    return await client.create_deployment(
        flow_id=flow_id,
        name=name,
        entrypoint="ascob_flows/flow.py:ascob_job",
        description="ASCOB runs. Run it with a job_spec to submit an ASCOB job from Prefect.",
        parameter_openapi_schema=_parameter_schema(flow),
        enforce_parameter_schema=False,
        paused=False,
        tags=[],  # every tag is one more row per event of every flow run
    )


def _parameter_schema(flow: Flow[Any, Any]) -> dict[str, Any]:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(flow).model_dump_for_openapi()


class Queries:
    """The flow run reads of one executor, all limited to its deployment."""

    def __init__(self, deployment_id: UUID, runtime: Runtime, installation: str) -> None:
        self.deployment_id = deployment_id
        self.runtime = runtime
        self.tag = installation_tag(installation)

    async def owns(self, flow_run: FlowRun) -> int | None:
        """The run id of this installation's run that ``flow_run`` runs, or None when the flow
        run is another installation's. A flow run with this installation's tag is its own; one
        with another installation's tag never; an untagged one (made by an older version, or
        started from Prefect with a ``job_spec``) only if this repository says so."""
        run_id = flow_run.parameters.get("run_id")
        ours = self.tag in flow_run.tags
        if not ours and any(t.startswith(INSTALLATION_TAG) for t in flow_run.tags):
            return None
        if ours and run_id is not None:
            return int(run_id)
        try:
            return await self.runtime.db.run_for_flow_run(str(flow_run.id))
        except Exception:
            return None

    def claimable(self, flow_run: FlowRun) -> bool:
        """Whether this installation may claim a Scheduled flow run: its own, or an untagged
        one started from Prefect with a ``job_spec`` (it registers itself where it runs)."""
        if self.tag in flow_run.tags:
            return True
        if any(t.startswith(INSTALLATION_TAG) for t in flow_run.tags):
            return False
        return "run_id" not in flow_run.parameters or flow_run.parameters["run_id"] is None

    def _deployment(self) -> DeploymentFilter:
        return DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id]))

    async def scheduled_due(self, client: PrefectClient, limit: int) -> list[FlowRun]:
        """Scheduled flow runs whose start time has come, oldest first: this installation's
        (by tag), then untagged ones (``job_spec`` runs started from Prefect, or made by an
        older version: :meth:`claimable` and the claim's record check decide)."""
        batch = await self._scheduled(client, FlowRunFilterTags(all_=[self.tag]), limit)
        if len(batch) < limit:
            batch += await self._scheduled(
                client, FlowRunFilterTags(is_null_=True), limit - len(batch)
            )
        return batch

    async def _scheduled(
        self, client: PrefectClient, tags: FlowRunFilterTags, limit: int
    ) -> list[FlowRun]:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(
                    before_=prefect_now("UTC")  # type: ignore[arg-type]
                ),
                tags=tags,
            ),
            deployment_filter=self._deployment(),
            sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
            limit=limit,
        )

    async def pending(self, client: PrefectClient, limit: int = 200) -> list[FlowRun]:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING]))
            ),
            deployment_filter=self._deployment(),
            limit=limit,
        )

    async def cancelling(self, client: PrefectClient, limit: int = 100) -> list[FlowRun]:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING]))
            ),
            deployment_filter=self._deployment(),
            sort=FlowRunSort.START_TIME_DESC,
            limit=limit,
        )

    async def cancelled_since(
        self, client: PrefectClient, since: Any, limit: int = 100
    ) -> list[FlowRun]:
        """Cancelled flow runs that ended after ``since`` (all, latest first, when None)."""
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLED])),
                end_time=None if since is None else FlowRunFilterEndTime(after_=since),
            ),
            deployment_filter=self._deployment(),
            sort=FlowRunSort.END_TIME_DESC,
            limit=limit,
        )

    @staticmethod
    async def is_scheduled(client: PrefectClient, flow_run_id: UUID) -> bool:
        """The flow run exists and waits for a claim."""
        try:
            flow_run = await client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return False
        return flow_run.state is not None and flow_run.state.type == StateType.SCHEDULED
