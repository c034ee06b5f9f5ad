"""The ``ascob`` command: ``serve`` (everything), ``api`` (REST only), ``executor`` (flows only).

Prefect reads its settings when first imported, so each command sets the Prefect environment
(and starts a local Prefect server if needed) before importing anything that imports Prefect.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from ascob_api import cli_client
from ascob_api.logsetup import configure_logging, redact
from ascob_api.settings import Settings

app = typer.Typer(
    help="ASCOB: one front door to your automation backends, on Prefect 3.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals would print tokens and settings
)
log = logging.getLogger("ascob")

HostOpt = Annotated[str, typer.Option(help="Address to listen on.")]
PortOpt = Annotated[int, typer.Option(help="Port of the REST API.")]


def _prepare(settings: Settings, start_local_prefect: bool) -> object | None:
    """Point this process at a Prefect server; start a local one if none is configured."""
    from ascob_api.prefect_server import LocalPrefectServer, prefect_env

    for key, value in prefect_env(settings.home).items():
        os.environ.setdefault(key, value)
    if settings.prefect_api_url:
        os.environ["PREFECT_API_URL"] = settings.prefect_api_url
        return None
    if not start_local_prefect:
        raise typer.BadParameter("PREFECT_API_URL must name the shared Prefect server")
    server = LocalPrefectServer(
        settings.home,
        host=settings.prefect_host,
        port=settings.prefect_port,
        public_url=settings.public_prefect_url,
    )
    try:
        os.environ["PREFECT_API_URL"] = server.start()
    except RuntimeError as exc:  # a foreign server on the port, or ours did not start
        log.error("%s", exc)
        raise SystemExit(1) from None
    return server


def _listen(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound before anything else starts (a local Prefect server,
    the executor) and before anything is logged as listening: a busy port is a clear error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        raise SystemExit(1) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        log.error(
            "cannot listen on %s:%d (%s): another process has this port; stop it or choose "
            "another one with --port",
            host,
            port,
            exc.strerror or exc,
        )
        raise SystemExit(1) from None
    return sock


def load_settings() -> Settings:
    """The settings, or a clear start-up error naming what is wrong (never a value: it could
    be a secret)."""
    try:
        return Settings()
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            what = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            where = f"ASCOB_{where.upper()}: " if where else ""
            typer.echo(f"ascob: configuration error: {where}{what}", err=True)
        raise SystemExit(2) from None


def _run(host: str, port: int, *, with_api: bool, with_executor: bool) -> None:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    sock = _listen(host, port) if with_api else None
    settings.home.mkdir(parents=True, exist_ok=True)
    token_note = (  # where a generated root token is, never the token itself
        "" if settings.root_token else f"; root token generated in {settings.home / 'root_token'}"
    )
    settings.ensure_root_token()
    redact(settings.secret_values())
    if with_api and not settings.public_url:
        settings.public_url = f"http://{host}:{port}"
    server = _prepare(settings, start_local_prefect=with_api and with_executor)
    try:
        from ascob_api.wiring import build, make_executor

        parts = build(settings)
        executor = make_executor(parts) if with_executor else None
        if executor is not None:
            executor.start_in_thread()
        if sock is not None:
            _serve_api(parts, sock, executor, token_note)
        else:
            _wait_for_signal(executor)
    finally:
        drained = _flush_prefect_logs()
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
        if not drained:
            # Prefect's exit hook would wait for the rest, retrying for minutes: leave now
            failed = sys.exc_info()[0] not in (None, SystemExit)
            logging.shutdown()
            os._exit(1 if failed else 0)


def _flush_prefect_logs(timeout: float = 5.0) -> bool:
    """Send the flow runs' last log lines to Prefect now, for a few seconds at most, while the
    local Prefect server still runs (left to the exit, Prefect's log queue would retry towards a
    stopped server for a minute or more). False when some could not be sent in time."""
    if "prefect.logging.handlers" not in sys.modules:
        return True
    from prefect.logging.handlers import APILogWorker

    try:
        result = APILogWorker.drain_all(timeout=timeout)
    except Exception as exc:
        log.warning("sending the last log lines to Prefect failed (%r)", exc)
        return True
    late = result[1] if isinstance(result, tuple) else set()
    if late:
        log.warning("Prefect did not take the last log lines within %.0f s; dropped", timeout)
    return not late


def _serve_api(parts: object, sock: socket.socket, executor: object, token_note: str) -> None:
    import uvicorn

    from ascob_api.main import create_app
    from ascob_api.wiring import Parts

    assert isinstance(parts, Parts)
    lifespan = None
    if executor is None:
        lifespan = _launcher_lifespan(parts)
    application = create_app(parts.services, lifespan=lifespan)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info("ASCOB API on http://%s:%d (docs at /docs)%s", shown, port, token_note)
    log.info("Prefect API %s", os.environ.get("PREFECT_API_URL"))
    config = uvicorn.Config(application, log_config=None, access_log=False, lifespan="on")
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it
    # found: with Python's default one the process would die there, before the executor and the
    # local Prefect server are stopped (the server was left running). Exit through Python.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if executor is not None:
            executor.stop()  # type: ignore[attr-defined]


def _exit_on_sigterm(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _launcher_lifespan(parts: object) -> Any:
    """``ascob api`` alone still creates flow runs for what it records."""
    import asyncio
    from contextlib import asynccontextmanager

    from prefect.client.orchestration import get_client

    from ascob_api.wiring import Parts
    from ascob_flows.executor import Launcher, ensure_deployment
    from ascob_flows.runtime import Runtime

    assert isinstance(parts, Parts)

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        runtime = Runtime(repo=parts.repo, backends=parts.backends, locks=parts.locks)
        launcher = Launcher(runtime, installation=parts.installation)
        parts.services.on_launch.append(launcher.kick)

        async def run() -> None:
            async with get_client() as client:
                while True:
                    try:
                        deployment_id = await ensure_deployment(client, parts.settings.deployment)
                        break
                    except Exception as exc:
                        log.warning("Prefect server not ready (%r); retrying", exc)
                        await asyncio.sleep(2)
                launcher.deployment_id = deployment_id
                await launcher.run(client)

        task = asyncio.create_task(run())
        try:
            yield
        finally:
            task.cancel()

    return lifespan


def _wait_for_signal(executor: object) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        if executor is not None and getattr(executor, "failed", None) is not None:
            sys.exit(1)
    if executor is not None:
        executor.stop()  # type: ignore[attr-defined]


@app.command()
def serve(host: HostOpt = "127.0.0.1", port: PortOpt = 8081) -> None:
    """Run everything: REST API, executor and (unless PREFECT_API_URL is set) a Prefect server."""
    _run(host, port, with_api=True, with_executor=True)


@app.command()
def api(host: HostOpt = "127.0.0.1", port: PortOpt = 8081) -> None:
    """Run the REST API only (needs PREFECT_API_URL); scale it out behind a load balancer."""
    _run(host, port, with_api=True, with_executor=False)


@app.command()
def executor() -> None:
    """Run an executor only (needs PREFECT_API_URL): runs ascob-job flow runs in-process."""
    _run("", 0, with_api=False, with_executor=True)


cli_client.register(app)  # submit, get, wait, logs, search, stop, ... (the REST client)

if __name__ == "__main__":
    app()
