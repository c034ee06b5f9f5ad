"""Static checks of what ships for containers: Dockerfile, .dockerignore, deploy/compose.yaml.

No Docker engine runs here (the image itself is proven by ``.ci/image`` with buildah, outside the
default suite). These tests read the files and check what a deployment relies on: the compose
file has the structure of the Compose specification where this file uses it (no schema
validator for it is a dependency of ours, so the keys used are checked against the spec's names);
the scale-out topology is complete (PostgreSQL, Prefect on PostgreSQL, 3 etcd members, 2 APIs
behind the proxy, 2 executors); every command exists in its image (``ascob`` subcommands and
their options from the real CLI, ``prefect server start``, Debian's ``etcd``); every environment
variable is a real setting of the program that reads it (ASCOB's ``Settings``, Prefect's
settings, etcd's flags, the postgres image's documented names); healthchecks, dependencies and
volumes hold together.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from ascob_api.cli import app as ascob_cli
from ascob_api.settings import Settings
from tests.etcd_server import etcd_binary

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"

# the Compose specification's names for what this file uses (top level and services)
TOP_LEVEL = {"name", "services", "volumes", "networks", "configs", "secrets", "include"}
SERVICE_KEYS = {
    "image", "build", "command", "entrypoint", "environment", "env_file", "volumes", "ports",
    "depends_on", "healthcheck", "restart", "hostname", "stop_grace_period", "networks",
    "labels", "user", "expose", "deploy", "init",
}  # fmt: skip
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "disable"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTART = {"no", "always", "on-failure", "unless-stopped"}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
# documented by the official postgres image
POSTGRES_ENV = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "POSTGRES_INITDB_ARGS"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # resolves the anchors and `<<` merges
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def ascob_image(service: dict[str, Any]) -> bool:
    """Built from the repository's Dockerfile (the ASCOB image)."""
    build = service.get("build") or {}
    return build.get("context") == ".." and build.get("dockerfile", "Dockerfile") == "Dockerfile"


def by_command(compose: dict[str, Any], *command: str) -> list[str]:
    return [
        name
        for name, svc in services(compose).items()
        if list(svc.get("command") or [])[: len(command)] == list(command)
    ]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping"
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


# ------------------------------------------------------------------ structure


def test_compose_structure_follows_the_spec(compose: dict[str, Any]) -> None:
    extra = {k for k in compose if not k.startswith("x-")} - TOP_LEVEL
    assert not extra, f"not Compose top-level keys: {extra}"
    assert "version" not in compose  # obsolete in the Compose specification
    declared_volumes = set(compose.get("volumes") or {})
    for name, svc in services(compose).items():
        unknown = set(svc) - SERVICE_KEYS
        assert not unknown, f"{name}: keys the Compose spec does not have: {unknown}"
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        if "build" in svc:
            build = svc["build"]
            assert (DEPLOY / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
        if "command" in svc:
            assert isinstance(svc["command"], list), f"{name}: command in exec form"
            assert all(isinstance(a, str) for a in svc["command"]), name
        if "restart" in svc:
            assert svc["restart"] in RESTART, name
        for port in svc.get("ports", []):
            assert re.fullmatch(r"\d+:\d+", str(port)), (name, port)
        if "stop_grace_period" in svc:
            assert DURATION.match(str(svc["stop_grace_period"])), name
        for volume in svc.get("volumes", []):
            source, target, *mode = str(volume).split(":")
            assert target.startswith("/"), (name, volume)
            assert mode in ([], ["ro"]), (name, volume)
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name}: {source} is not in deploy/"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        check = svc.get("healthcheck")
        assert check is not None, f"{name}: no healthcheck (or `disable: true`)"
        assert set(check) <= HEALTHCHECK_KEYS, (name, check)
        if not check.get("disable"):
            assert check["test"][0] in ("CMD", "CMD-SHELL"), (name, check)
            for key in ("interval", "timeout", "start_period"):
                if key in check:
                    assert DURATION.match(str(check[key])), (name, key, check[key])
        depends = svc.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on with conditions"
        for other, cond in depends.items():
            assert other in compose["services"], (name, other)
            assert cond["condition"] in DEPENDS_CONDITIONS, (name, cond)
            if cond["condition"] == "service_healthy":
                other_check = compose["services"][other].get("healthcheck") or {}
                assert not other_check.get("disable"), f"{name} waits for {other}'s health"


def test_the_scale_out_topology_is_complete(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    apis = by_command(compose, "ascob", "api")
    executors = by_command(compose, "ascob", "executor")
    etcds = by_command(compose, "etcd")
    prefect = by_command(compose, "prefect", "server", "start")
    assert len(apis) == 2 and len(executors) == 2 and len(etcds) == 3 and len(prefect) == 1
    assert all(ascob_image(svcs[n]) for n in [*apis, *executors, *prefect])
    assert svcs["postgres"]["image"].startswith("postgres:")
    assert svcs["proxy"]["image"].startswith("nginx:")
    assert "8081:8081" in svcs["proxy"]["ports"]

    # one installation: every ASCOB process shares repository, Prefect, etcd, tokens, deployment
    shared = [
        "ASCOB_DATABASE_URL",
        "PREFECT_API_URL",
        "ASCOB_ETCD_URL",
        "ASCOB_ROOT_TOKEN",
        "ASCOB_DEPLOYMENT",
    ]
    envs = [env_of(svcs[n]) for n in [*apis, *executors]]
    for key in shared:
        assert len({env.get(key) for env in envs}) == 1 and envs[0].get(key), key
    env = envs[0]
    assert env["ASCOB_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/ascob" in env["ASCOB_DATABASE_URL"]
    assert env_of(svcs["postgres"])["POSTGRES_DB"] == "ascob"
    assert re.search(r"create database prefect\b", (DEPLOY / "postgres-init.sql").read_text(), re.I)
    prefect_env = env_of(svcs[prefect[0]])
    assert "@postgres:5432/prefect" in prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    command = svcs[prefect[0]]["command"]
    port = command[command.index("--port") + 1]
    assert env["PREFECT_API_URL"] == f"http://{prefect[0]}:{port}/api"

    # ASCOB_ETCD_URL names exactly the members; the members name each other in one cluster
    advertised = {env_of(svcs[n])["ETCD_ADVERTISE_CLIENT_URLS"] for n in etcds}
    assert (
        set(env["ASCOB_ETCD_URL"].split(",")) == advertised == {f"http://{n}:2379" for n in etcds}
    )
    clusters = {env_of(svcs[n])["ETCD_INITIAL_CLUSTER"] for n in etcds}
    assert len(clusters) == 1
    members = dict(m.split("=", 1) for m in clusters.pop().split(","))
    for n in etcds:
        mine = env_of(svcs[n])
        assert members[mine["ETCD_NAME"]] == mine["ETCD_INITIAL_ADVERTISE_PEER_URLS"]
    assert sorted(members) == sorted(env_of(svcs[n])["ETCD_NAME"] for n in etcds)

    # the proxy balances over both API replicas, on their port
    conf = (DEPLOY / "nginx.conf").read_text()
    upstream = set(re.findall(r"^\s*server\s+([\w-]+):(\d+)", conf, re.M))
    ports = {n: svcs[n]["command"][svcs[n]["command"].index("--port") + 1] for n in apis}
    assert upstream == set(ports.items())
    assert set(svcs["proxy"]["depends_on"]) == set(apis)

    # executors: stable, distinct identities (a restarted container resumes its own runs)
    ids = [env_of(svcs[n]).get("ASCOB_EXECUTOR_ID") for n in executors]
    assert all(ids) and len(set(ids)) == len(ids)
    # API replicas listen on every interface of their container
    for n in apis:
        command = svcs[n]["command"]
        assert command[command.index("--host") + 1] == "0.0.0.0"
    # each process keeps its own data volume
    homes = [v for n in [*apis, *executors] for v in svcs[n]["volumes"] if v.endswith(":/data")]
    assert len(set(homes)) == len(apis) + len(executors)


# ------------------------------------------------------------------ commands exist in the image


@cache
def ascob_commands() -> dict[str, set[str]]:
    """The real CLI's subcommands and the options each takes."""
    group = typer.main.get_command(ascob_cli)
    commands = group.commands  # type: ignore[attr-defined]
    return {name: {opt for p in cmd.params for opt in p.opts} for name, cmd in commands.items()}


def test_every_command_exists_in_its_image(compose: dict[str, Any]) -> None:
    known = ascob_commands()
    assert {"serve", "api", "executor"} <= set(known)
    prefect_help: str | None = None
    etcd_dockerfile = (DEPLOY / "etcd.Dockerfile").read_text()
    for name, svc in services(compose).items():
        command = svc.get("command")
        if ascob_image(svc):
            assert command, f"{name}: the ASCOB image with no command runs `ascob serve`"
            if command[0] == "ascob":
                assert command[1] in known, f"{name}: `ascob {command[1]}` does not exist"
                options = {a for a in command[2:] if a.startswith("--")}
                assert options <= known[command[1]], (name, options - known[command[1]])
            else:
                assert command[:3] == ["prefect", "server", "start"], name
                if prefect_help is None:
                    prefect_help = subprocess.run(
                        [sys.executable, "-m", "prefect", "server", "start", "--help"],
                        capture_output=True,
                        text=True,
                        timeout=120,
                    ).stdout
                for option in (a for a in command[3:] if a.startswith("--")):
                    assert option in prefect_help, (name, option)
        elif svc.get("build", {}).get("dockerfile") == "etcd.Dockerfile":
            assert command == ["etcd"], name
            assert "etcd-server" in etcd_dockerfile  # Debian's package ships /usr/bin/etcd
            if svc["healthcheck"]["test"][1] == "etcdctl":
                assert "etcd-client" in etcd_dockerfile  # ... and etcdctl
        elif svc["image"].startswith("postgres:"):
            assert command is None or command[0] == "postgres", name
            assert svc["healthcheck"]["test"][1] == "pg_isready", name
        elif svc["image"].startswith("nginx:"):
            assert command is None, name  # the image's own
        else:
            pytest.fail(f"{name}: an image this test does not know: {svc.get('image')}")


# ------------------------------------------------------------------ environment names


def ascob_setting_names() -> set[str]:
    names = set()
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        names.add(alias if isinstance(alias, str) else f"ASCOB_{field.upper()}")
    return names


@cache
def prefect_setting_names() -> set[str]:
    from prefect.settings import Settings as PrefectSettings
    from prefect.settings.legacy import _get_valid_setting_names

    return set(_get_valid_setting_names(PrefectSettings))


@cache
def etcd_flags() -> set[str]:
    binary = etcd_binary()
    if binary is None:
        message = "no etcd binary to read its flags (apt-get install etcd-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    return set(re.findall(r"--([a-z0-9-]+)", done.stdout + done.stderr))


def test_every_environment_name_is_a_real_setting(compose: dict[str, Any]) -> None:
    ascob = ascob_setting_names()
    assert "ASCOB_ETCD_URL" in ascob and "PREFECT_API_URL" in ascob
    for name, svc in services(compose).items():
        for key in env_of(svc):
            if key.startswith("ASCOB_"):
                assert key in ascob, f"{name}: {key} is not an ASCOB setting"
            elif key.startswith("PREFECT_"):
                assert key in prefect_setting_names(), f"{name}: {key} is not a Prefect setting"
            elif key.startswith("ETCD_"):
                flag = key.removeprefix("ETCD_").lower().replace("_", "-")
                assert flag in etcd_flags(), f"{name}: {key} is not an etcd flag (--{flag})"
            elif key.startswith("POSTGRES_"):
                assert key in POSTGRES_ENV, f"{name}: {key}"
            else:
                pytest.fail(f"{name}: {key} is no ASCOB_/PREFECT_/ETCD_/POSTGRES_ setting")
    # secrets come from the operator's .env, never from the file itself
    text = COMPOSE.read_text()
    for secret in ("POSTGRES_PASSWORD", "ASCOB_ROOT_TOKEN"):
        assert "${" + secret + ":?" in text, f"{secret} must be required from .env"
    example = (DEPLOY / "env.example").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text)) - {"ASCOB_IMAGE", "ETCD_IMAGE"}
    assert used <= set(re.findall(r"^([A-Z_]+)=", example, re.M)), used


# ------------------------------------------------------------------ Dockerfile


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_promises() -> None:
    steps = dockerfile_instructions(ROOT / "Dockerfile")
    words = [w for w, _ in steps]
    # the base image is a build argument, declared before the first FROM, used by both stages
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE_IMAGE=")
    froms = [rest for w, rest in steps if w == "FROM"]
    assert len(froms) == 2 and all(f.startswith("${BASE_IMAGE}") for f in froms)
    final = steps[words.index("FROM", words.index("FROM") + 1) :]
    user = [rest for w, rest in final if w == "USER"]
    assert user and user[-1] not in ("root", "0")
    cmd = [rest for w, rest in final if w == "CMD"][-1]
    assert yaml.safe_load(cmd) == ["ascob", "serve", "--host", "0.0.0.0", "--port", "8081"]
    assert not [w for w, _ in final if w == "ENTRYPOINT"]  # compose commands start with `ascob`
    env = " ".join(rest for w, rest in final if w == "ENV")
    assert "ASCOB_HOME=/data" in env
    assert [rest for w, rest in final if w == "VOLUME"] == ['["/data"]']
    assert ("EXPOSE", "8081") in final
    # the Prefect UI of `ascob serve` is reachable through a published port
    assert "ASCOB_PREFECT_HOST=0.0.0.0" in env and "ASCOB_PREFECT_HOST" in ascob_setting_names()
    assert ("EXPOSE", str(Settings.model_fields["prefect_port"].default)) in final
    # no executor id in the image: every container of it would have the same one
    assert "ASCOB_EXECUTOR_ID" not in env
    health = [rest for w, rest in final if w == "HEALTHCHECK"]
    assert len(health) == 1 and "/api/health" in health[0]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_the_healthcheck_endpoint_needs_no_token(tmp_path: Path) -> None:
    """The image's HEALTHCHECK (and compose's) GETs /api/health without a token."""
    from fastapi.testclient import TestClient

    from ascob_api.main import create_app
    from ascob_api.wiring import build

    parts = build(Settings(home=tmp_path, root_token="not-sent"))
    with TestClient(create_app(parts.services)) as client:
        assert client.get("/api/health").status_code == 200
        assert client.get("/api/runs/1").status_code in (401, 403)  # the rest needs one


def test_dockerignore_keeps_what_the_build_copies() -> None:
    steps = dockerfile_instructions(ROOT / "Dockerfile")
    copied = [
        part
        for w, rest in steps
        if w == "COPY" and "--from" not in rest
        for part in shlex.split(rest)[:-1]
    ]
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]
    assert rules[0] == "*"  # nothing but what is listed (no .venv, .git, ASCOB_HOME)
    allowed = {r.removeprefix("!").rstrip("/") for r in rules if r.startswith("!")}
    for path in copied:
        assert path.rstrip("/") in allowed, f"{path} is copied but ignored"
        assert (ROOT / path).exists(), path


def test_image_proof_is_kept_out_of_the_default_suite() -> None:
    script = ROOT / ".ci" / "image"
    assert script.is_file() and os.access(script, os.X_OK)
    for default in (ROOT / ".ci" / "run", ROOT / ".ci" / "test"):
        assert ".ci/image" not in default.read_text()
