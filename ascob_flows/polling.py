"""The flow's last part: following the backend's job until the run is final (the
``poll-to-completion`` task of :mod:`ascob_flows.flow`), as plain async code like
:mod:`ascob_flows.lifecycle`, which re-exports :func:`follow`."""

from __future__ import annotations

from typing import Any, Protocol

from ascob_flows.control import apply_backend_report
from ascob_flows.machine import JOB_LOST, Stage
from ascob_flows.ports import RunRecord
from ascob_flows.retry import BACKEND
from ascob_flows.runtime import Runtime
from ascob_flows.status import RunStatus
from backends import Backend, BackendUnavailable, JobNotFound

NOT_FOUND_LIMIT = 5  # consecutive "job not found" answers before the run ends FAILED
_FOLLOWED = (Stage.SUBMITTED, Stage.RUNNING, Stage.ABORTING)


class Logger(Protocol):
    def info(self, msg: str, *args: Any) -> None: ...
    def warning(self, msg: str, *args: Any) -> None: ...
    def error(self, msg: str, *args: Any) -> None: ...


class Shower(Protocol):
    def __call__(self, status: RunStatus) -> None: ...


def no_view(status: RunStatus) -> None:
    return None


async def follow(
    rt: Runtime,
    run_id: int,
    logger: Logger,
    show: Shower = no_view,
    linked: Any = None,
) -> RunStatus:
    """Follow the backend job until the run is final; a webhook may end it sooner.
    ``linked(rec, report)`` is called once, with the first answer of the backend."""
    failures = 0
    shown: RunStatus | None = None
    not_found = 0
    seen = False  # the backend answered once: its job page is known
    while True:
        rec = await rt.record(run_id)
        if rec.status.is_final or rec.stage not in _FOLLOWED:
            return rec.status  # ended, or never dispatched (stopped before)
        if rec.status is not shown:
            show(rec.status)
            shown = rec.status
        if not rec.identification_keys:
            # the job reported during a dispatch whose answer was lost: only it can tell more
            await rt.wait_change(run_id, rec.status, None)
            continue
        backend = rt.backends.get(rec.backend_id)
        try:
            stop_failed: Exception | None = None
            if rec.status is RunStatus.ABORTING and not rec.stop_sent:
                try:
                    await _stop(rt, backend, rec)
                except Exception as exc:  # the job may have ended meanwhile: its status says
                    stop_failed = exc
            report = await backend.status(rec.identification_keys)
            if stop_failed is not None and not report.status.is_final:
                raise stop_failed
        except JobNotFound as exc:
            not_found += 1
            if not_found >= NOT_FOUND_LIMIT:
                logger.error("run %s: %s no longer knows the job: %s", run_id, backend.id, exc)
                message = f"{backend.id} no longer knows the job ({exc})"
                await rt.db.apply(run_id, JOB_LOST, message=message)
                continue
            await rt.wait_change(run_id, rec.status, rt.poll_interval)
            continue
        except Exception as exc:
            backoff = max(rt.poll_interval, BACKEND.delay(failures))
            failures += 1
            level = logger.warning if isinstance(exc, BackendUnavailable) else logger.error
            level(
                "run %s: polling %s failed (%r); again in %.0f s", run_id, backend.id, exc, backoff
            )
            await rt.wait_change(run_id, rec.status, backoff)
            continue
        failures = 0
        not_found = 0
        if not seen:
            seen = True
            if report.url:
                await rt.db.record_backend_url(run_id, report.url)
            if linked is not None:
                linked(rec, report)
        if await apply_backend_report(rt.db, run_id, report):
            logger.info("run %s: %s", run_id, (await rt.record(run_id)).status.value)
            continue
        await rt.wait_change(run_id, rec.status, rt.poll_interval)


async def _stop(rt: Runtime, backend: Backend, rec: RunRecord) -> None:
    if backend.can_stop:
        await backend.stop(rec.identification_keys, force=rec.abort_force)
    await rt.db.mark_stop_sent(rec.id)
