"""What the executor asks the Prefect server: its deployment, and the flow runs of it in a state.

Every read names the deployment.
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
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.types._datetime import now as prefect_now

from ascob_flows.flow import DEPLOYMENT_NAME, ascob_job


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

    def __init__(self, deployment_id: UUID) -> None:
        self.deployment_id = deployment_id

    def _deployment(self) -> DeploymentFilter:
        return DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id]))

    async def scheduled_due(self, client: PrefectClient, limit: int) -> list[FlowRun]:
        """Scheduled flow runs whose start time has come, oldest first."""
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(
                    before_=prefect_now("UTC")  # type: ignore[arg-type]
                ),
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
