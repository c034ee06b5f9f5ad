"""Builds the parts of an ASCOB process from its settings (imports Prefect: call after the
Prefect environment is set)."""

from __future__ import annotations

import hashlib
import logging
import socket
from dataclasses import dataclass

from ascob_api.db import create_schema, make_engine
from ascob_api.repository import Repository
from ascob_api.service import Services
from ascob_api.settings import Settings
from ascob_flows.executor import Executor
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
    return Parts(settings, repo, backends, locks, services)


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
        register_spec=parts.services.register_from_flow,
        public_url=settings.public_url,
    )
    executor = Executor(
        runtime,
        executor_id or settings.executor_id or default_executor_id(settings),
        max_concurrent=settings.executor_concurrency,
        start_rate=settings.executor_start_rate,
        deployment_name=settings.deployment,
        executor_ttl=settings.executor_ttl,
        heartbeat_interval=settings.executor_heartbeat,
    )
    parts.services.on_launch.append(executor.launcher.kick if executor.launcher else executor.kick)
    parts.services.on_change.append(runtime.notify)
    return executor
