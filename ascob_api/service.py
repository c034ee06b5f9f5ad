"""What the REST API does, apart from HTTP: submission, stop, resubmit, webhook, files, output.

Handlers call these functions; they raise :mod:`ascob_api.errors`, which the app maps to HTTP
once. Backend calls are async; repository calls are short: async code makes them through
:attr:`Services.db`, which runs each in a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from ascob_api.callbacks import check_url
from ascob_api.errors import BackendFailed, BadRequest, Conflict
from ascob_api.models import IdempotencyKey, Run
from ascob_api.repository import AsyncRepository, DuplicateKey, Repository
from ascob_api.settings import Settings
from ascob_api.wire import JobSpec, RunInfo
from ascob_flows.clock import utcnow
from ascob_flows.control import apply_backend_report, request_stop
from ascob_flows.errors import InvalidSpec, NotDispatched, RunNotFound
from ascob_flows.locks import LockStore, validate_key
from ascob_flows.machine import KEYS_REPORTED, Stage, report_step
from ascob_flows.ports import AuditNote
from ascob_flows.status import RunStatus
from backends import BackendRegistry, SpecRejected

log = logging.getLogger("ascob.api")

_EXPLAINED = frozenset({RunStatus.FAILED, RunStatus.ABORTED, RunStatus.IN_DOUBT})
IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")
RUNTIME_VARIABLES = ("RUNID", "WEBHOOKID", "SUBMITTER")
LATE_VARIABLES = ("LOCKTOKEN",)  # replaced at dispatch
_VARIABLE = re.compile(r"%%([^%\s]*)%%")
FILE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class Services:
    """Everything a request handler may need, created once per process."""

    settings: Settings
    repo: Repository
    backends: BackendRegistry
    locks: LockStore
    on_launch: list[Callable[[], None]] = field(default_factory=list)
    on_change: list[Callable[[int], None]] = field(default_factory=list)
    _db: AsyncRepository | None = field(default=None, repr=False)

    @property
    def db(self) -> AsyncRepository:
        """The repository for async code: each call in a worker thread."""
        if self._db is None or self._db.repo is not self.repo:
            self._db = AsyncRepository(self.repo)
        return self._db

    # ------------------------------------------------------------------ notifications

    def _launch(self) -> None:
        for callback in self.on_launch:
            callback()

    def _changed(self, run_id: int) -> None:
        for callback in self.on_change:
            callback(run_id)

    # ------------------------------------------------------------------ submission

    def _check_spec(self, spec: JobSpec) -> str:
        if spec.callback_url is not None:
            try:
                check_url(self.settings, spec.callback_url)
            except BadRequest as exc:
                raise InvalidSpec(exc.message) from None
        for lock in spec.locks:
            try:
                validate_key(lock.key)
            except ValueError as exc:
                raise InvalidSpec(f"invalid lock: {exc}") from None
        try:
            backend = self.backends.select(spec.labels, spec.description)
        except SpecRejected as exc:
            raise InvalidSpec(str(exc)) from exc
        return backend.id

    def dry_run_spec(self, spec: JobSpec) -> tuple[JobSpec, str]:
        """The submission's cheap checks, recording nothing: the spec as it would run (runtime
        variables replaced as for a run numbered 0) and the backend that would run it."""
        effective = substitute(spec, 0, "") if spec.runtime_variables else spec
        return effective, self._check_spec(effective)

    def submit(self, spec: JobSpec, owner: str, idempotency_key: str | None) -> tuple[Run, bool]:
        """A portal's submission: the run, and whether it is a replay of an earlier submission
        with the same ``Idempotency-Key`` (same token, same body: the same run, nothing new)."""
        if idempotency_key is None:
            return self._submitted(self.create_run(spec), owner), False
        if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise BadRequest(
                "Idempotency-Key must be 1-255 printable ASCII characters without spaces"
            )
        digest = hashlib.sha256(
            json.dumps(spec.wire(), sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        claim = IdempotencyKey(
            owner=owner,
            key=idempotency_key,
            request_hash=digest,
            run_id=0,
            expires_at=utcnow() + timedelta(seconds=self.settings.idempotency_seconds),
        )
        try:
            return self._submitted(self.create_run(spec, claim=claim), owner), False
        except DuplicateKey as dup:
            if dup.request_hash != digest:
                raise Conflict(
                    f"Idempotency-Key {idempotency_key!r} was used for run {dup.run_id} with "
                    "another job spec; use a new key for a new job"
                ) from None
            self.repo.audit(owner, "submit_replayed", dup.run_id, idempotency_key=idempotency_key)
            return self.repo.get_run(dup.run_id), True

    def _submitted(self, run: Run, actor: str) -> Run:
        self.repo.audit(actor, "submit", run.id, submitter=run.submitter, backend=run.backend_id)
        return run

    def create_run(
        self,
        spec: JobSpec,
        parent_id: int | None = None,
        flow_run_id: str | None = None,
        claim: IdempotencyKey | None = None,
    ) -> Run:
        """Validate, record and (unless manual start) ask for a flow run. Returns the run."""
        if not spec.runtime_variables:
            self._check_spec(spec)
        webhook_id = secrets.token_urlsafe(24)
        raw = spec.wire()
        run = Run(
            parent_id=parent_id,
            description=spec.description,
            submitter=spec.submitter,
            spec=raw,
            effective_spec=raw,
            backend_id="",
            lock_keys=[],
            manual_start=spec.manual_start,
            launch_requested=not spec.manual_start,
            webhook_id=webhook_id,
            flow_run_id=flow_run_id,
        )

        def finish(row: Run) -> None:
            effective = spec
            if spec.runtime_variables:
                effective = substitute(spec, row.id or 0, webhook_id)
            row.backend_id = self._check_spec(effective)
            row.effective_spec = effective.wire()
            row.description = effective.description
            row.submitter = effective.submitter
            row.lock_keys = sorted({lock.key for lock in effective.locks})

        run = self.repo.add_run(run, finish, claim)
        log.info(
            "run %s: defined (backend %s, submitter %s)",
            run.id,
            run.backend_id,
            run.submitter,
            extra={"runId": run.id},
        )
        if run.launch_requested and flow_run_id is None:
            self._launch()
        return run

    def register_from_flow(self, job_spec: dict[str, Any], flow_run_id: str) -> int:
        """A flow run started from the deployment with a JobSpec records itself as a run."""
        try:
            spec = JobSpec.model_validate(job_spec)
        except ValidationError as exc:
            raise InvalidSpec(f"invalid job_spec: {exc}") from exc
        spec.manual_start = False
        run = self.create_run(spec, flow_run_id=flow_run_id)
        assert run.id is not None
        self.repo.audit("prefect", "submit", run.id, submitter=run.submitter, flow_run=flow_run_id)
        return run.id

    def resubmit(self, run_id: int, submitter: str, actor: str) -> Run:
        source = self.repo.get_run(run_id)
        root_id = source.parent_id or source.id
        spec = JobSpec.model_validate(source.spec)
        spec.submitter = submitter
        spec.manual_start = False
        run = self.create_run(spec, parent_id=root_id)
        self.repo.audit(actor, "resubmit", run.id, source=run_id, submitter=submitter)
        return run

    def start(self, run_id: int, actor: str) -> Run:
        run = self.repo.get_run(run_id)
        if not run.manual_start:
            raise BadRequest(f"run {run_id} is not a manual-start run")
        if run.launch_requested or run.status != RunStatus.DEFINED:
            raise BadRequest(f"run {run_id} was started already (status {run.status})")
        self.repo.request_launch(run_id, actor)
        log.info("run %s: started manually", run_id, extra={"runId": run_id})
        self._launch()
        return self.repo.get_run(run_id)

    # ------------------------------------------------------------------ stop

    async def abort(self, run_id: int, force: bool, actor: str) -> Run:
        await request_stop(self.db, self.locks, self.backends, run_id, force, actor=actor)
        self._changed(run_id)
        return await self.db.get_run(run_id)

    # ------------------------------------------------------------------ refresh and output

    async def refresh(self, run_id: int, actor: str) -> RunInfo:
        run = await self.db.get_run(run_id)
        await self.db.audit(actor, "refresh", run_id)
        if RunStatus(run.status).is_final or not run.identification_keys:
            return RunInfo.of(run)
        backend = self.backends.get(run.backend_id)
        try:
            report = await backend.status(run.identification_keys)
        except Exception as exc:
            raise BackendFailed(f"{backend.id} did not answer: {exc}") from exc
        if await apply_backend_report(self.db, run_id, report):
            self._changed(run_id)
        return RunInfo.of(await self.db.get_run(run_id))

    async def output(self, run_id: int, offset: int) -> tuple[str, int, bool]:
        run = await self.db.get_run(run_id)
        # why it did not succeed, above the job's own output (not counted in its offsets)
        explain = run.message and offset == 0 and RunStatus(run.status) in _EXPLAINED
        prefix = f"[ascob] {run.message}\n" if explain else ""
        if not run.identification_keys:
            return prefix, offset, not RunStatus(run.status).is_final
        backend = self.backends.get(run.backend_id)
        try:
            chunk = await backend.output(run.identification_keys, offset)
        except Exception as exc:
            note = f"{backend.id} did not return the output: {exc}"
            if RunStatus(run.status).is_final:
                # what ASCOB knows is still worth showing: the run's message and why no more
                return f"{prefix}[ascob] {note}\n", offset, False
            raise BackendFailed(note) from exc
        return prefix + chunk.text, chunk.next_offset, chunk.more

    # ------------------------------------------------------------------ webhook

    def _live_webhook(self, webhook_id: str) -> Run:
        run = self.repo.get_run_by_webhook(webhook_id)
        if RunStatus(run.status).is_final:
            raise RunNotFound("webhook not found (the run has ended)")
        return run

    def webhook_update(
        self, webhook_id: str, status: RunStatus | None, keys: dict[str, str] | None, actor: str
    ) -> Run:
        """A job reports back: identification keys (kept for the dispatch when they come
        before it), and RUNNING or how it ended, once ASCOB has dispatched it."""
        step = None
        if status is not None:
            try:
                step = report_step(status)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        run = self._live_webhook(webhook_id)
        assert run.id is not None
        stage = Stage.of(RunStatus(run.status), run.dispatch_started)
        if step is not None and stage in (Stage.DEFINED, Stage.WAITING_LOCKS, Stage.PENDING_SUBMIT):
            raise NotDispatched(
                f"run {run.id} has not been dispatched yet (it is {run.status}): a job reports "
                "its status once ASCOB has dispatched it",
                RunStatus(run.status),
            )
        if keys:
            backend = self.backends.get(run.backend_id)
            merged = self.repo.apply(
                run.id,
                KEYS_REPORTED,
                keys=lambda stored: backend.merge_identification_keys(stored, keys),
                audit=AuditNote(actor, "webhook_keys", {"keys": sorted(keys)}),
            )
            if merged is None:
                raise RunNotFound("webhook not found (the run has ended)")
        if step is not None:
            said: dict[str, Any] = {}
            if status in (RunStatus.FAILED, RunStatus.ABORTED):
                said["message"] = f"the job reported {status.value} through its webhook"
            note = AuditNote(
                actor,
                "webhook_status",
                {"status": status.value if status else None},
                always=True,
                unless_ended=True,
                says_applied=True,
            )
            moved = self.repo.apply(run.id, step, audit=note, **said)
            if moved is None and RunStatus(self.repo.get_run(run.id).status).is_final:
                raise RunNotFound("webhook not found (the run has ended)")
            log.info(
                "run %s: webhook reports %s (was %s)%s",
                run.id,
                status,
                run.status,
                "" if moved else "; nothing changed",
                extra={"runId": run.id},
            )
        self._changed(run.id)
        return self.repo.get_run(run.id)

    def webhook_file(self, webhook_id: str, file_id: str) -> bytes:
        run = self._live_webhook(webhook_id)
        owner = run.parent_id or run.id
        assert owner is not None
        return self.repo.get_file(owner, file_id).content

    # ------------------------------------------------------------------ files

    def upload(self, run_id: int, file_id: str, content: bytes, actor: str) -> None:
        if not FILE_ID.match(file_id):
            raise BadRequest(
                "fileId must be 1-128 characters of letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if len(content) > self.settings.max_file_bytes:
            raise BadRequest(
                f"file is {len(content)} bytes; the limit is {self.settings.max_file_bytes}"
            )
        run = self.repo.get_run(run_id)
        if run.parent_id is not None:
            raise BadRequest(f"run {run_id} is a resubmission: it uses its root run's files")
        if run.status != RunStatus.DEFINED:
            raise BadRequest(
                f"files can be added only while the run is DEFINED (it is {run.status})"
            )
        self.repo.put_file(run_id, file_id, content)
        self.repo.audit(actor, "upload", run_id, file=file_id, size=len(content))
        log.info(
            "run %s: file %s uploaded (%d bytes)",
            run_id,
            file_id,
            len(content),
            extra={"runId": run_id},
        )


def substitute(spec: JobSpec, run_id: int, webhook_id: str) -> JobSpec:
    """Replace the runtime variables everywhere in the spec; refuse unknown ones."""
    values = {"RUNID": str(run_id), "WEBHOOKID": webhook_id, "SUBMITTER": spec.submitter or ""}
    unknown: set[str] = set()

    def replace(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in values:
                return values[name]
            if name not in LATE_VARIABLES:
                unknown.add(match.group(0))
            return match.group(0)

        return _VARIABLE.sub(one, text)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return replace(value)
        if isinstance(value, dict):
            return {walk(k): walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    data = walk(spec.wire())
    if unknown:
        raise InvalidSpec(
            f"unknown runtime variable(s) {', '.join(sorted(unknown))}; known: "
            + ", ".join(f"%%{v}%%" for v in (*RUNTIME_VARIABLES, *LATE_VARIABLES))
        )
    return JobSpec.model_validate(data)
