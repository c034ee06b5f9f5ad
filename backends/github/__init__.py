"""``githubActionsBackend``: runs a GitHub Actions workflow (``workflow_dispatch``) through the
REST API of github.com or GitHub Enterprise Server (GHES).

Configuration (section ``[github.<instance>]`` of the ``ASCOB_CONFIG`` TOML file)::

    [github.cloud]
    url = "https://api.github.com"   # default; GHES: "https://HOST/api/v3"
    token_env = "GITHUB_CLOUD_TOKEN"  # the token is read from this environment variable
    # timeout = 30                    # seconds per HTTP call
    # run_input = "ascob_run"         # the correlation input every dispatch carries
    # find_timeout = 60               # seconds to look for a run whose dispatch answer is unknown
    # find_interval = 2               # seconds between two looks
    # max_rate_limit_wait = 3600      # seconds a dispatch may wait for a rate limit to pass

Labels: ``github_instance`` (may be left out when one instance is configured),
``github_repository`` (``owner/repo``), ``github_workflow`` (file name such as ``deploy.yml``,
or the numeric id), ``github_ref`` (branch or tag; default: the repository's default branch).
Job parameters become the workflow's ``inputs``.

Dispatch. ``POST …/actions/workflows/{id}/dispatches`` with ``return_run_details: true``
answers 200 with ``workflow_run_id``. Every dispatch also carries the input ``ascob_run`` (a value
unique to the run), which the workflow declares and shows in its ``run-name``. That value finds
the run when the answer does not name it: an older GHES that refuses the field (a 4xx naming it;
retried once without it, and remembered) or ignores it (204), and a dispatch whose answer was
lost (timeout, 5xx, malformed). If no run carries it within ``find_timeout`` the submission
raises :class:`~backends.OutcomeUnknown`: the run ends IN_DOUBT and is never dispatched again. A
rate-limit answer (403/429) proves that nothing was created: the dispatch waits and is sent again.

Identification keys: ``githubInstance``, ``githubRepository``, ``githubWorkflowId``,
``githubRunId``, ``githubCorrelation``.

Output: the logs of the run's jobs (latest attempt, by job id), each once the job has completed
(the API has no live log), after a ``=== job <name> (<conclusion>) ===`` line; offsets are bytes
of that concatenation, which only grows: a job is shown only after every job before it.
"""

from __future__ import annotations

__all__ = ["CONCLUSIONS", "STATUSES", "GitHubActionsBackend"]

import asyncio
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx

from backends import kit
from backends.github.client import GitHubClient, GitHubRateLimited

log = logging.getLogger(__name__)

REPOSITORY_LABEL = "github_repository"
WORKFLOW_LABEL = "github_workflow"
REF_LABEL = "github_ref"
DEFAULT_URL = "https://api.github.com"
DEFAULT_RUN_INPUT = "ascob_run"

# Workflow run ``status`` -> ASCOB; ``completed`` is decided by the conclusion.
STATUSES = kit.statuses(
    queued=("requested", "queued", "pending", "waiting"),
    running=("in_progress",),
)
# ``completed`` + conclusion; any other conclusion (failure, timed_out, startup_failure,
# action_required, neutral, skipped, stale, ...) is FAILED with the conclusion in the message.
CONCLUSIONS = {"success": kit.BackendStatus.SUCCEEDED, "cancelled": kit.BackendStatus.ABORTED}

_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_LOG_CACHE_BYTES = 32 * 1024 * 1024
_SEARCH_MARGIN = timedelta(minutes=10)  # clock skew between ASCOB and GitHub

T = TypeVar("T")


@dataclass(frozen=True)
class Instance(kit.RestInstance):
    kind = "github"
    run_input: str = DEFAULT_RUN_INPUT
    find_timeout: float = 60.0
    find_interval: float = 2.0
    max_rate_limit_wait: float = 3600.0

    @classmethod
    def parse(cls, name: str, raw: Any) -> Instance:
        return cls(
            **cls.common(name, raw, default_url=DEFAULT_URL),
            run_input=str(raw.get("run_input", DEFAULT_RUN_INPUT)),
            find_timeout=float(raw.get("find_timeout", 60.0)),
            find_interval=float(raw.get("find_interval", 2.0)),
            max_rate_limit_wait=float(raw.get("max_rate_limit_wait", 3600.0)),
        )


@dataclass(frozen=True)
class _WorkflowRun:
    instance: str
    client: GitHubClient
    repository: str
    run_id: str


class GitHubActionsBackend(kit.KitBackend[Instance, GitHubClient]):
    id = "githubActionsBackend"
    config_section = "github"
    takes = (WORKFLOW_LABEL,)
    instance_type, client_type = Instance, GitHubClient

    def setup(self) -> None:
        self._run_details: dict[str, bool] = {}  # instance -> knows return_run_details
        self._log_sizes: dict[tuple[str, str, str], int] = {}
        self._logs: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._logs_bytes = 0

    # ------------------------------------------------------------------ spec

    def validate(self, labels: Mapping[str, str]) -> None:
        super().validate(labels)
        repository = labels.get(REPOSITORY_LABEL, "")
        if not repository:
            raise kit.SpecRejected(f"label {REPOSITORY_LABEL} is required (owner/repo)")
        if not _REPOSITORY.match(repository):
            raise kit.SpecRejected(
                f"{REPOSITORY_LABEL}={repository!r} is not of the form owner/repo"
            )
        if not labels.get(WORKFLOW_LABEL, "").strip():
            raise kit.SpecRejected(
                f"label {WORKFLOW_LABEL} is required (a file name such as deploy.yml, or an id)"
            )

    def _known(self, keys: Mapping[str, str]) -> _WorkflowRun:
        repository, run_id = kit.required(keys, "githubRepository", "githubRunId")
        instance, client = self.known(keys)
        return _WorkflowRun(instance.name, client, repository, run_id)

    # ------------------------------------------------------------------ submit

    async def _patiently(
        self, inst: Instance, where: str, call: Callable[[], Awaitable[T]], started: float
    ) -> T:
        """``call()``, waiting out rate limits (a rate-limit answer proves nothing was done)."""
        while True:
            try:
                return await call()
            except GitHubRateLimited as exc:
                waited = time.monotonic() - started
                wait = exc.wait()
                if waited + wait > inst.max_rate_limit_wait:
                    raise kit.SubmitRefused(
                        f"{where}: rate limited by GitHub for {wait:.0f} s more after waiting "
                        f"{waited:.0f} s (max_rate_limit_wait = {inst.max_rate_limit_wait:.0f}); "
                        f"{exc.message}"
                    ) from exc
                log.warning("%s: rate limited (%s); waiting %.0f s", where, exc.message, wait)
                await asyncio.sleep(max(wait, 0.05))

    async def submit(self, job: kit.Job) -> dict[str, str]:
        self.validate(job.labels)
        inst = self.instances.for_labels(job.labels)
        name = inst.name
        client = self.client(inst)
        repository = job.labels[REPOSITORY_LABEL]
        workflow = job.labels[WORKFLOW_LABEL].strip()
        where = f"github {name!r} {repository} workflow {workflow!r}"
        if inst.run_input in job.parameters:
            raise kit.SubmitRefused(
                f"{where}: the parameter {inst.run_input} is set by ASCOB itself; rename it"
            )
        started = time.monotonic()
        unseen = f"no repository {repository}, or the token cannot see it"
        with kit.before_sending(where, "the repository", unseen):
            repo = await self._patiently(
                inst, where, lambda: client.repository(repository), started
            )
        with kit.before_sending(where, "the workflow", f"no workflow {workflow!r} in {repository}"):
            definition = await self._patiently(
                inst, where, lambda: client.workflow(repository, workflow), started
            )
        ref = job.labels.get(REF_LABEL) or repo.get("default_branch")
        if not ref or definition.get("id") is None:
            raise kit.SubmitRefused(
                f"{where}: GitHub did not name the default branch or workflow id"
            )
        state = definition.get("state")
        if state not in (None, "active"):
            raise kit.SubmitRefused(f"{where}: the workflow is {state}")
        workflow_id = str(definition["id"])
        correlation = f"ascob-{job.run_id}-{uuid.uuid4().hex[:12]}"
        inputs = {**dict(job.parameters), inst.run_input: correlation}
        since = (datetime.now(UTC) - _SEARCH_MARGIN).strftime("%Y-%m-%dT%H:%M:%SZ")
        keys = {
            "githubInstance": name,
            "githubRepository": repository,
            "githubWorkflowId": workflow_id,
            "githubCorrelation": correlation,
        }
        answer, unknown = await self._dispatch(
            inst, client, where, repository, workflow_id, str(ref), inputs, started
        )
        run_id: Any = answer.get("workflow_run_id") if answer is not None else None
        if isinstance(run_id, int) and not isinstance(run_id, bool):
            log.info("run %s: %s dispatched as run %s", job.run_id, where, run_id)
            return {**keys, "githubRunId": str(run_id)}
        if unknown is None:
            why = "answered without naming the run"
            if answer is None:
                self._run_details[inst.name] = False  # it ignores the field: ask no more
        else:
            why = unknown
        found = await self._find_run(inst, client, repository, workflow_id, correlation, since)
        if found is None:
            raise kit.OutcomeUnknown(
                f"{where}: the dispatch {why}, and no run named with {inst.run_input}="
                f"{correlation} appeared within {inst.find_timeout:.0f} s: outcome unknown "
                f"(does the workflow set run-name: ${{{{ inputs.{inst.run_input} }}}}?)"
            )
        log.info("run %s: %s: the dispatch %s; found run %s", job.run_id, where, why, found)
        return {**keys, "githubRunId": found}

    async def _dispatch(
        self,
        inst: Instance,
        client: GitHubClient,
        where: str,
        repository: str,
        workflow_id: str,
        ref: str,
        inputs: dict[str, str],
        started: float,
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Send the dispatch once: (its JSON or None for 204, None) or (None, why the outcome
        is unknown). Refusals raise SubmitRefused; rate limits are waited out and re-sent."""
        details = self._run_details.get(inst.name, True)
        while True:
            send = details  # bound now: the lambda runs later

            def call(send: bool = send) -> Awaitable[dict[str, Any] | None]:
                return client.dispatch(repository, workflow_id, ref, inputs, send)

            try:
                return await self._patiently(inst, where, call, started), None
            except kit.SystemHTTPError as exc:
                if exc.status_code >= 500:
                    return None, f"answered {exc}"
                if details and "return_run_details" in exc.message:
                    log.warning("%s: this GitHub does not know return_run_details", where)
                    self._run_details[inst.name] = details = False
                    continue  # refused as a whole, nothing created: once more without it
                hint = ""
                if inst.run_input in exc.message:
                    hint = (
                        f" (the workflow must declare the workflow_dispatch input "
                        f"{inst.run_input}, and show it in its run-name)"
                    )
                raise kit.SubmitRefused(f"{where}: dispatch refused: {exc}{hint}") from exc
            except (httpx.HTTPError, kit.SystemProtocolError) as exc:
                if not kit.may_have_arrived(exc):
                    cannot = f"{where}: cannot connect ({kit.describe(exc)})"
                    raise kit.SubmitRefused(cannot) from exc
                return None, f"failed ({kit.describe(exc)})"

    async def _find_run(
        self,
        inst: Instance,
        client: GitHubClient,
        repository: str,
        workflow_id: str,
        correlation: str,
        since: str,
    ) -> str | None:
        """The id of the run whose name shows ``correlation``, looked for until find_timeout."""
        deadline = time.monotonic() + inst.find_timeout
        while True:
            pause = inst.find_interval
            try:
                for run in await client.workflow_runs(repository, workflow_id, since):
                    titles = (str(run.get("display_title") or ""), str(run.get("name") or ""))
                    if any(correlation in t for t in titles) and run.get("id") is not None:
                        return str(run["id"])
            except GitHubRateLimited as exc:
                pause = max(pause, exc.wait())
            except kit.CALL_ERRORS as exc:
                log.warning("looking for run %s: %s", correlation, kit.describe(exc))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(pause, remaining))

    # ------------------------------------------------------------------ follow

    async def status(self, keys: Mapping[str, str]) -> kit.StatusReport:
        known = self._known(keys)
        with _following(f"github: run {known.run_id}"):
            run = await known.client.run(known.repository, known.run_id)
        state, conclusion = run.get("status"), run.get("conclusion")
        url = run.get("html_url") if isinstance(run.get("html_url"), str) else None
        label = f"workflow run {known.run_id}"
        mapped = STATUSES.get(str(state))
        if mapped is not None:
            return kit.StatusReport(mapped, f"{label}: {state}", url)
        if state != "completed":
            raise kit.BackendUnavailable(f"github: {label} has an unknown status {state!r}")
        if not conclusion:
            raise kit.BackendUnavailable(f"github: {label} is completed without a conclusion yet")
        final = CONCLUSIONS.get(str(conclusion), kit.BackendStatus.FAILED)
        message = None if final is kit.BackendStatus.SUCCEEDED else f"{label}: {conclusion}"
        return kit.StatusReport(final, message, url)

    async def stop(self, keys: Mapping[str, str], force: bool = False) -> None:
        known = self._known(keys)
        with _following("github cancel", missing=()):
            try:
                await known.client.cancel(known.repository, known.run_id, force)
            except kit.SystemHTTPError as exc:
                if exc.status_code != 409:
                    raise
                # "Cannot cancel a workflow run that is completed."
                log.info("github cancel of run %s: %s", known.run_id, exc.message)

    # ------------------------------------------------------------------ output

    def _remember(self, key: tuple[str, str, str], block: bytes) -> None:
        self._log_sizes[key] = len(block)
        self._logs[key] = block
        self._logs_bytes += len(block)
        while self._logs_bytes > _LOG_CACHE_BYTES and len(self._logs) > 1:
            _, dropped = self._logs.popitem(last=False)
            self._logs_bytes -= len(dropped)

    async def _block(
        self, known: _WorkflowRun, job: Mapping[str, Any], run_completed: bool
    ) -> bytes | None:
        """A completed job's part of the output, or None while its log is not there yet."""
        job_id = str(job.get("id"))
        key = (known.instance, known.repository, job_id)
        cached = self._logs.get(key)
        if cached is not None:
            self._logs.move_to_end(key)
            return cached
        conclusion = job.get("conclusion") or "completed"
        head = f"=== job {job.get('name') or job_id} ({conclusion}) ===\n".encode()
        if conclusion == "skipped":
            body = b""
        else:
            try:
                body = await known.client.job_log(known.repository, job_id)
            except kit.SystemHTTPError as exc:
                if exc.status_code not in (404, 410) or isinstance(exc, GitHubRateLimited):
                    raise
                if not run_completed:
                    return None  # logs are uploaded a moment after the job ends
                body = f"(no log: {exc.message})\n".encode()
            body = body.removeprefix(b"\xef\xbb\xbf")  # GitHub's logs start with a BOM
            if body and not body.endswith(b"\n"):
                body += b"\n"
        block = head + body
        self._remember(key, block)
        return block

    async def output(self, keys: Mapping[str, str], offset: int = 0) -> kit.OutputChunk:
        known = self._known(keys)
        with _following(f"github: run {known.run_id}"):
            run = await known.client.run(known.repository, known.run_id)
            run_completed = run.get("status") == "completed"
            jobs = await known.client.jobs(known.repository, known.run_id)
            jobs.sort(key=_job_order)
            text, position, complete = bytearray(), 0, True
            for job in jobs:
                if job.get("status") != "completed":
                    complete = False
                    break
                key = (known.instance, known.repository, str(job.get("id")))
                size = self._log_sizes.get(key)
                if size is not None and position + size <= offset:
                    position += size  # read before and unchanged since: no download
                    continue
                block = await self._block(known, job, run_completed)
                if block is None:
                    complete = False
                    break
                if position + len(block) > offset:
                    text += block[max(0, offset - position) :]
                position += len(block)
        more = not (run_completed and complete)
        return kit.OutputChunk(text.decode("utf-8", errors="replace"), max(offset, position), more)


def _job_order(job: Mapping[str, Any]) -> tuple[int, str]:
    """Jobs in the order GitHub created them (ids grow), so the output only ever grows."""
    job_id = job.get("id")
    return (job_id if isinstance(job_id, int) else 0, str(job_id))


@contextmanager
def _following(what: str, missing: tuple[int, ...] = (404,)) -> Iterator[None]:
    """The kit's :func:`~backends.kit.following`, saying how long a rate limit lasts."""
    with kit.following(what, missing):
        try:
            yield
        except GitHubRateLimited as exc:
            raise kit.BackendUnavailable(f"{what}: rate limited for {exc.wait():.0f} s") from exc
