"""The ``ascob`` commands that talk to a running service (over the REST API, through
:mod:`ascob_api.client`): submit, get, wait, logs, search, stop, start, resubmit, refresh, locks,
backends, tokens, whoami, audit.

Where to connect: ``--url``/``--token`` (before the command), else ``ASCOB_URL``/``ASCOB_TOKEN``,
else the profile named by ``--profile`` (or ``ASCOB_PROFILE``, or ``default``) in the client
config file (``ASCOB_CLIENT_CONFIG``, default ``~/.config/ascob/client.toml``)::

    [profiles.prod]
    url = "https://ascob.example.com"
    token_env = "ASCOB_PROD_TOKEN"   # the token is read from this variable (or: token = "...")

The token is never printed. Output is a readable table or panel; ``--json`` prints JSON for
scripts. Exit codes: see :data:`EXIT_HELP`.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

from ascob_api.cli_connect import (
    EXIT_API,
    EXIT_BY_STATUS,
    EXIT_HELP,
    EXIT_SUCCEEDED,
    EXIT_USAGE,
    Target,
    connected,
    err,
    fail,
    out,
)
from ascob_api.client import (
    Client,
    WaitTimeout,
)
from ascob_api.wire import JobSpec, RunInfo

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
RunArg = Annotated[int, typer.Argument(help="The run's id.", metavar="RUN")]
TimeoutOpt = Annotated[
    float | None, typer.Option(help="Give up waiting after this many seconds (exit 5).")
]


def _pairs(values: list[str], what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            fail(EXIT_USAGE, f"{what} {value!r}: expected KEY=VALUE")
        found[key] = item
    return found


def _dump(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _info_json(info: RunInfo) -> dict[str, Any]:
    data: dict[str, Any] = info.model_dump(mode="json", by_alias=True)
    return data


def show_run(info: RunInfo, as_json: bool) -> None:
    if as_json:
        _dump(_info_json(info))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "run": str(info.id),
        "status": info.status.value,
        "description": info.description or "",
        "submitter": info.submitter or "",
        "backend": info.backend_id or "",
        "defined": str(info.defined_time or ""),
        "submitted": str(info.submission_time or ""),
        "ended": str(info.end_time or ""),
        "message": info.message or "",
        "waiting for": ", ".join(f"run {r}" for r in info.waiting_for or []),
        "job page": info.backend_url or "",
        "parent": str(info.parent_id or ""),
    }
    for name, value in rows.items():
        if value:
            table.add_row(name, value)
    out.print(table)


def exit_for(info: RunInfo) -> NoReturn:
    raise typer.Exit(EXIT_BY_STATUS.get(info.status, EXIT_SUCCEEDED))


def _load_spec(source: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        fail(EXIT_USAGE, f"cannot read the job spec from {source}: {exc}")
    if isinstance(data, dict) and "jobSpec" in data:
        data = data["jobSpec"]
    if not isinstance(data, dict):
        fail(EXIT_USAGE, "the job spec must be a JSON object")
    return data


def register(app: typer.Typer) -> None:
    """Add the client commands (and the --url/--token/--profile options) to ``app``."""

    @app.callback(epilog=EXIT_HELP)
    def main(
        ctx: typer.Context,
        url: Annotated[str | None, typer.Option(help="ASCOB's URL (else ASCOB_URL).")] = None,
        token: Annotated[
            str | None, typer.Option(help="API token (else ASCOB_TOKEN).", show_default=False)
        ] = None,
        profile: Annotated[
            str | None, typer.Option(help="A profile of the client config file.")
        ] = None,
    ) -> None:
        """ASCOB: one front door to your automation backends, on Prefect 3."""
        ctx.obj = Target(url, token, profile)

    def command(name: str | None = None) -> Callable[..., Any]:
        return app.command(name, epilog=EXIT_HELP)

    @command()
    def submit(
        ctx: typer.Context,
        file: Annotated[
            str | None, typer.Option("-f", "--file-spec", help="A JobSpec JSON file, - = stdin.")
        ] = None,
        description: Annotated[str | None, typer.Option("--description", "-d")] = None,
        submitter: Annotated[str | None, typer.Option(help="The end user it runs for.")] = None,
        label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeat).")] = None,
        param: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeat).")] = None,
        lock: Annotated[list[str] | None, typer.Option(help="A lock key (repeat).")] = None,
        backend: Annotated[str | None, typer.Option(help="The backend id.")] = None,
        manual_start: Annotated[bool, typer.Option("--manual-start")] = False,
        upload: Annotated[
            list[str] | None,
            typer.Option("--file", help="ID=PATH: an input file, uploaded before it starts."),
        ] = None,
        idempotency_key: Annotated[
            str | None, typer.Option(help="Retrying with the same key never makes two runs.")
        ] = None,
        wait: Annotated[bool, typer.Option("--wait", help="Wait until it ends.")] = False,
        follow: Annotated[
            bool, typer.Option("--follow", help="Show its status and output until it ends.")
        ] = False,
        timeout: TimeoutOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Submit a job: from flags, or a JobSpec file (-f spec.json, or - for stdin)."""
        data: dict[str, Any] = _load_spec(file) if file else {}
        if description is not None:
            data["description"] = description
        if submitter is not None:
            data["submitter"] = submitter
        data["labels"] = {**data.get("labels", {}), **_pairs(label or [], "--label")}
        if backend:
            data["labels"]["_execution_backend_id"] = backend
        data["parameters"] = {**data.get("parameters", {}), **_pairs(param or [], "--param")}
        data["locks"] = [*data.get("locks", []), *({"key": k} for k in lock or [])]
        files = _pairs(upload or [], "--file")
        if manual_start or files:
            data["manualStart"] = True
        try:
            spec = JobSpec.model_validate(data)
        except ValueError as exc:
            fail(EXIT_USAGE, f"invalid job spec: {exc}")
        with connected(ctx) as client:
            run_id = client.submit(spec, idempotency_key or (str(uuid.uuid4()) if files else None))
            for file_id, path in files.items():
                try:
                    content = Path(path).read_bytes()
                except OSError as exc:
                    fail(EXIT_USAGE, f"--file {file_id}: {exc}")
                client.upload(run_id, file_id, content)
            if files and not manual_start:
                client.start(run_id)
            if follow:
                _follow(client, run_id, timeout, as_json)
            if wait:
                _wait(client, run_id, timeout, as_json)
        if as_json:
            _dump({"runId": run_id})
        else:
            out.print(f"run {run_id}")

    @command()
    def get(ctx: typer.Context, run: RunArg, as_json: JsonOpt = False) -> None:
        """A run's status, times, message and what it waits for."""
        with connected(ctx) as client:
            show_run(client.get(run), as_json)

    @command("wait")
    def wait_cmd(
        ctx: typer.Context, run: RunArg, timeout: TimeoutOpt = None, as_json: JsonOpt = False
    ) -> None:
        """Wait until the run ends, showing its status as it changes; exit code = how it ended."""
        with connected(ctx) as client:
            _wait(client, run, timeout, as_json)

    @command()
    def logs(
        ctx: typer.Context,
        run: RunArg,
        follow: Annotated[
            bool, typer.Option("-f", "--follow", help="Stream until it ends.")
        ] = False,
        timeout: TimeoutOpt = None,
    ) -> None:
        """The run's output (with -f: as it comes, until the run ends)."""
        with connected(ctx) as client:
            if follow:
                _follow(client, run, timeout, as_json=False, statuses=False)
            text = client.output(run).text
            # ends with a newline, as with -f (a job's last line may have none)
            sys.stdout.write(text if not text or text.endswith("\n") else f"{text}\n")

    @command()
    def search(
        ctx: typer.Context,
        submitter: Annotated[str | None, typer.Option()] = None,
        status: Annotated[list[str] | None, typer.Option(help="A status (repeat).")] = None,
        after: Annotated[str | None, typer.Option(help="Defined after (UTC).")] = None,
        before: Annotated[str | None, typer.Option(help="Defined before (UTC).")] = None,
        limit: Annotated[int, typer.Option(help="At most this many runs.")] = 50,
        as_json: JsonOpt = False,
    ) -> None:
        """Runs, newest first."""
        with connected(ctx) as client:
            found: list[RunInfo] = []
            for info in client.search(submitter, status, after, before, page_size=min(limit, 200)):
                found.append(info)
                if len(found) >= limit:
                    break
        if as_json:
            _dump([_info_json(i) for i in found])
            return
        table = Table("run", "status", "submitter", "description", "defined", "backend")
        for i in found:
            table.add_row(
                str(i.id),
                i.status.value,
                i.submitter or "",
                i.description or "",
                str(i.defined_time or ""),
                i.backend_id or "",
            )
        out.print(table)

    @command()
    def stop(
        ctx: typer.Context,
        run: RunArg,
        force: Annotated[bool, typer.Option(help="Kill rather than ask.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Stop a run (ABORTED at once if not dispatched, else ABORTING until it stops)."""
        with connected(ctx) as client:
            show_run(client.stop(run, force), as_json)

    @command()
    def start(ctx: typer.Context, run: RunArg, as_json: JsonOpt = False) -> None:
        """Start a manual-start run."""
        with connected(ctx) as client:
            show_run(client.start(run), as_json)

    @command()
    def resubmit(
        ctx: typer.Context,
        run: RunArg,
        submitter: Annotated[str, typer.Option(help="The new run's submitter.")],
        as_json: JsonOpt = False,
    ) -> None:
        """Run a run's spec again for another submitter."""
        with connected(ctx) as client:
            new = client.resubmit(run, submitter)
        _dump({"runId": new}) if as_json else out.print(f"run {new}")

    @command()
    def refresh(ctx: typer.Context, run: RunArg, as_json: JsonOpt = False) -> None:
        """Ask the backend about the run's job now."""
        with connected(ctx) as client:
            show_run(client.refresh(run), as_json)

    @command()
    def locks(ctx: typer.Context, as_json: JsonOpt = False) -> None:
        """Held and awaited locks: holder, fencing token, queue, reservation."""
        with connected(ctx) as client:
            data = client.locks()
        if as_json:
            _dump(data)
            return
        table = Table("key", "holder", "since", "token", "waiting", "reserved for")
        for item in data["items"]:
            table.add_row(
                item["key"],
                str(item.get("holderRunId") or ""),
                str(item.get("since") or ""),
                str(item.get("fencingToken") or ""),
                ", ".join(map(str, item.get("waitingRunIds", []))),
                str(item.get("reservedForRunId") or ""),
            )
        out.print(f"store: {data['store']}")
        out.print(table)

    @command()
    def backends(ctx: typer.Context, as_json: JsonOpt = False) -> None:
        """The backends the server loaded (or failed to load), with their instances."""
        with connected(ctx) as client:
            data = client.backends()
        if as_json:
            _dump(data)
            return
        table = Table("backend", "state", "instances", "error")
        for b in data:
            table.add_row(b["id"], b["state"], ", ".join(b["instances"]), b.get("error") or "")
        out.print(table)

    @command()
    def whoami(ctx: typer.Context, as_json: JsonOpt = False) -> None:
        """The token's identifier and permissions."""
        with connected(ctx) as client:
            data = client.whoami()
        if as_json:
            _dump(data)
            return
        out.print(f"{data.get('identifier')}: {', '.join(data['authorities'])}")

    @command()
    def audit(ctx: typer.Context, run: RunArg, as_json: JsonOpt = False) -> None:
        """Who did what to a run."""
        with connected(ctx) as client:
            entries = client.audit(run)
        if as_json:
            _dump([e.model_dump(mode="json", by_alias=True) for e in entries])
            return
        table = Table("at", "actor", "action", "details")
        for e in reversed(entries):
            table.add_row(str(e.at), e.actor, e.action, json.dumps(e.details) if e.details else "")
        out.print(table)

    tokens = typer.Typer(help="API tokens.", no_args_is_help=True)
    app.add_typer(tokens, name="tokens")

    @tokens.command("create", epilog=EXIT_HELP)
    def tokens_create(
        ctx: typer.Context,
        identifier: str,
        permission: Annotated[list[str], typer.Option(help="A permission (repeat).")],
        expiry: Annotated[int, typer.Option(help="Seconds until it expires; 0 = never.")] = 0,
        as_json: JsonOpt = False,
    ) -> None:
        """Create a token; its secret is printed this once."""
        with connected(ctx) as client:
            secret = client.create_token(identifier, permission, expiry)
        _dump({"identifier": identifier, "secret": secret}) if as_json else out.print(secret)

    @tokens.command("list", epilog=EXIT_HELP)
    def tokens_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
        """Tokens created through the API (never their secrets)."""
        with connected(ctx) as client:
            found = client.tokens()
        if as_json:
            _dump([t.model_dump(mode="json", by_alias=True) for t in found])
            return
        table = Table("identifier", "permissions", "created", "expires")
        for t in found:
            table.add_row(
                t.identifier, ", ".join(t.permissions), str(t.created_at), str(t.expires_at or "")
            )
        out.print(table)

    @tokens.command("revoke", epilog=EXIT_HELP)
    def tokens_revoke(ctx: typer.Context, identifier: str) -> None:
        """Revoke a token."""
        with connected(ctx) as client:
            client.revoke_token(identifier)
        out.print(f"revoked {identifier}")


def _wait(client: Client, run_id: int, timeout: float | None, as_json: bool) -> NoReturn:
    """Show the status as it changes (with what the run waits for) until it ends."""
    last: tuple[Any, ...] | None = None
    started = time.monotonic()
    while True:
        info = client.get(run_id)
        seen = (info.status, tuple(info.waiting_for or ()))
        if seen != last and not as_json:
            waiting = f" (waiting for run {', '.join(map(str, seen[1]))})" if seen[1] else ""
            err.print(f"run {run_id}: {info.status.value}{waiting}", highlight=False)
        last = seen
        if info.status.is_final:
            show_run(info, as_json)
            exit_for(info)
        if timeout is not None and time.monotonic() - started >= timeout:
            raise WaitTimeout(f"run {run_id} still {info.status.value} after {timeout} s")
        time.sleep(1.0)


def _follow(
    client: Client, run_id: int, timeout: float | None, as_json: bool, statuses: bool = True
) -> NoReturn:
    for event in client.follow(run_id, timeout=timeout):
        if event.kind == "output":
            sys.stdout.write(f"{event.line}\n")
            sys.stdout.flush()
        elif event.run is not None and statuses and event.kind == "status":
            waiting = event.run.waiting_for
            extra = f" (waiting for run {', '.join(map(str, waiting))})" if waiting else ""
            err.print(f"run {run_id}: {event.run.status.value}{extra}", highlight=False)
        elif event.kind == "end" and event.run is not None:
            if statuses:
                show_run(event.run, as_json)
            exit_for(event.run)
    raise typer.Exit(EXIT_API)
