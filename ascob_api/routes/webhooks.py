"""/api/webhooks: the running job reports back and fetches its input files."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from ascob_api.deps import IdentityDep, ServicesDep, require
from ascob_api.security import Identity, Permission
from ascob_api.wire import RunInfo, WebhookUpdate

router = APIRouter(prefix="/api/webhooks/runs", tags=["webhooks"])


@router.post(
    "/{webhookId}",
    operation_id="webhookUpdateRun",
    response_model=RunInfo,
    response_model_by_alias=True,
)
async def update_run(
    webhookId: str, body: WebhookUpdate, services: ServicesDep, identity: IdentityDep
) -> RunInfo:
    """Report the job's status and/or identification keys. A final status ends the webhook."""
    if body.status is not None:
        identity.require(Permission.webhook_update_status)
    if body.identification_keys:
        identity.require(Permission.webhook_identification_keys)
    if body.status is None and not body.identification_keys:
        identity.require(Permission.webhook_update_status)
    run = await asyncio.to_thread(
        services.webhook_update, webhookId, body.status, body.identification_keys, identity.name
    )
    return RunInfo.of(run)


@router.get("/{webhookId}/files/{fileId}", operation_id="webhookGetFile", response_class=Response)
async def get_file(
    webhookId: str,
    fileId: str,
    services: ServicesDep,
    _: Identity = require(Permission.webhook_get_files),
) -> Response:
    """An input file of the run (a resubmitted run reads its root run's files)."""
    content = await asyncio.to_thread(services.webhook_file, webhookId, fileId)
    return Response(content, media_type="application/octet-stream")
