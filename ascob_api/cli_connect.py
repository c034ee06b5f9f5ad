"""Where the ``ascob`` client commands connect, and how they end: the target (``--url``,
``--token``, ``ASCOB_URL``/``ASCOB_TOKEN`` or a profile of the client config file), the exit
codes (:data:`EXIT_HELP`), and :func:`connected`, which turns the server's errors into a message
and an exit code."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from ascob_api.client import (
    ApiError,
    AuthError,
    Client,
    ClientError,
    ConnectionFailed,
    WaitTimeout,
)
from ascob_flows.status import RunStatus

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_IN_DOUBT = 4
EXIT_TIMEOUT = 5
EXIT_AUTH = 6
EXIT_CONNECTION = 7
EXIT_API = 8

EXIT_HELP = (
    "Exit codes: 0 done (a run: SUCCEDED), 1 FAILED, 2 usage error, 3 ABORTED, 4 IN_DOUBT, "
    "5 timed out waiting, 6 authentication or permission refused, 7 no connection to ASCOB, "
    "8 any other error answered by ASCOB (its message is shown)."
)
EXIT_BY_STATUS = {
    RunStatus.SUCCEDED: EXIT_SUCCEEDED,
    RunStatus.FAILED: EXIT_FAILED,
    RunStatus.ABORTED: EXIT_ABORTED,
    RunStatus.IN_DOUBT: EXIT_IN_DOUBT,
}

out = Console()
err = Console(stderr=True)


@dataclass
class Target:
    url: str | None = None
    token: str | None = None
    profile: str | None = None

    def connect(self) -> Client:
        url, token = self.url or os.environ.get("ASCOB_URL"), self.token
        token = token or os.environ.get("ASCOB_TOKEN")
        if not (url and token):
            profile = self._profile()
            url = url or profile.get("url")
            if not token:
                token = profile.get("token")
                variable = profile.get("token_env")
                if variable:
                    token = os.environ.get(str(variable)) or token
        if not url or not token:
            fail(
                EXIT_USAGE,
                "no ASCOB to talk to: give --url and --token, set ASCOB_URL and ASCOB_TOKEN, "
                "or name a profile of the client config file (--profile)",
            )
        return Client(str(url), str(token))

    def _profile(self) -> dict[str, Any]:
        path = Path(
            os.environ.get("ASCOB_CLIENT_CONFIG", "~/.config/ascob/client.toml")
        ).expanduser()
        name = self.profile or os.environ.get("ASCOB_PROFILE") or "default"
        if not path.exists():
            if self.profile:
                fail(EXIT_USAGE, f"no client config file {path} (for profile {name!r})")
            return {}
        try:
            profiles = tomllib.loads(path.read_text()).get("profiles", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            fail(EXIT_USAGE, f"cannot read {path}: {exc}")
        if name not in profiles:
            if self.profile:
                fail(EXIT_USAGE, f"no profile {name!r} in {path} (has: {', '.join(profiles)})")
            return {}
        return dict(profiles[name])


def fail(code: int, message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def connected(ctx: typer.Context) -> Iterator[Client]:
    """A client for this command; the server's errors become messages and exit codes."""
    target: Target = ctx.obj or Target()
    try:
        with target.connect() as client:
            yield client
    except AuthError as exc:
        fail(EXIT_AUTH, exc.message)
    except ApiError as exc:
        fail(EXIT_API, f"{exc.message} (HTTP {exc.status})")
    except ConnectionFailed as exc:
        fail(EXIT_CONNECTION, f"cannot reach ASCOB: {exc}")
    except WaitTimeout as exc:
        fail(EXIT_TIMEOUT, str(exc))
    except ClientError as exc:
        fail(EXIT_USAGE, str(exc))
