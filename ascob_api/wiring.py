"""Builds the parts of an ASCOB process from its settings (imports Prefect: call after the
Prefect environment is set)."""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ascob_api.db import create_schema, make_engine
from ascob_api.repository import Repository
from ascob_api.service import Services
from ascob_api.settings import Settings
from ascob_flows.executor import Executor
from ascob_flows.executor.queries import installation_tag
from ascob_flows.locks import LockStore
from ascob_flows.locks.sql import SqlLockStore
from ascob_flows.runtime import Runtime
from backends import BackendRegistry

log = logging.getLogger("ascob")


@dataclass
class Parts:
    settings: Settings
    repo: Repository
    backends: BackendRegistry
    locks: LockStore
    services: Services
    installation: str = ""  # the identity kept in the repository


def make_lock_store(settings: Settings, repo: Repository) -> LockStore:
    """etcd when ASCOB_ETCD_URL is set (v3 API, or v2 with ASCOB_ETCD_API=v2); else SQL."""
    if settings.etcd_url:
        if settings.etcd_api == "v2":
            from ascob_flows.locks.etcd_v2 import EtcdV2LockStore

            log.info("locks: etcd v2 API at %s", settings.etcd_url)
            return EtcdV2LockStore(settings.etcd_url, lease_seconds=settings.lock_lease_seconds)
        from ascob_flows.locks.etcd_v3 import EtcdV3LockStore

        log.info("locks: etcd v3 API at %s", settings.etcd_url)
        return EtcdV3LockStore(settings.etcd_url, lease_seconds=settings.lock_lease_seconds)
    return SqlLockStore(repo.engine, lease_seconds=settings.lock_lease_seconds)


def build(settings: Settings) -> Parts:
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    repo = Repository(engine, callback_retry_seconds=settings.callback_retry_seconds)
    backends = BackendRegistry.load(settings.home / "backends", settings.backend_config)
    for state in backends.states:
        if state.state != "loaded":
            log.error("backend %s is not available: %s", state.id, state.error)
    locks = make_lock_store(settings, repo)
    services = Services(settings=settings, repo=repo, backends=backends, locks=locks)
    installation = repo.installation_id()
    log.info("installation %s (repository %s)", installation, _shown_url(settings.db_url))
    return Parts(settings, repo, backends, locks, services, installation)


def _shown_url(url: str) -> str:
    """The database URL without its password."""
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def tagging_registration(parts: Parts) -> Callable[[dict[str, Any], str], int]:
    """Registration of a flow run started from Prefect with a ``job_spec``: the run is recorded,
    then the flow run gets the tags a launcher gives the flow runs it creates (installation,
    owner, backend), so it looks like every other run in the Prefect UI and stays this
    installation's. A resumed flow run carries on with the run it registered before."""

    def register(job_spec: dict[str, Any], flow_run_id: str) -> int:
        known = parts.repo.run_for_flow_run(flow_run_id) if flow_run_id else None
        if known is not None:
            return known  # a resumed flow run (handed back, or of a dead executor): its run
        run_id = parts.services.register_from_flow(job_spec, flow_run_id)
        if flow_run_id:
            rec = parts.repo.get_record(run_id)
            tags = [installation_tag(parts.installation), f"backend:{rec.backend_id}"]
            if rec.submitter:
                tags.append(f"owner:{rec.submitter}")
            try:
                _add_tags(UUID(flow_run_id), tags)
            except Exception as exc:  # cosmetic for the run; logged for operators
                log.warning("run %s: could not tag flow run %s (%r)", run_id, flow_run_id, exc)
        return run_id

    return register


def _add_tags(flow_run_id: UUID, tags: list[str]) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        wanted = [*flow_run.tags, *(t for t in tags if t not in flow_run.tags)]
        client.update_flow_run(flow_run_id, tags=wanted)


def default_executor_id(settings: Settings) -> str:
    digest = hashlib.sha256(str(settings.home).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


def make_executor(parts: Parts, executor_id: str | None = None) -> Executor:
    settings = parts.settings
    runtime = Runtime(
        repo=parts.repo,
        backends=parts.backends,
        locks=parts.locks,
        poll_interval=settings.poll_interval,
        dispatch_retry=settings.dispatch_retry_seconds,
        register_spec=tagging_registration(parts),
        public_url=settings.public_url,
    )
    executor = Executor(
        runtime,
        executor_id or settings.executor_id or default_executor_id(settings),
        installation=parts.installation,
        max_concurrent=settings.executor_concurrency,
        start_rate=settings.executor_start_rate,
        deployment_name=settings.deployment,
        executor_ttl=settings.executor_ttl,
        heartbeat_interval=settings.executor_heartbeat,
    )
    parts.services.on_launch.append(executor.launcher.kick if executor.launcher else executor.kick)
    parts.services.on_change.append(runtime.notify)
    return executor
