"""Configuration: environment variables with the prefix ``ASCOB_`` (pydantic-settings)."""

from __future__ import annotations

import os
import secrets
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_home() -> Path:
    local = Path.cwd() / ".ascob"
    if local.is_dir() or os.access(Path.cwd(), os.W_OK):
        return local
    return Path.home() / ".ascob"


CsvList = Annotated[list[str], NoDecode]
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def check_oidc_url(name: str, url: str) -> None:
    """https, or http on loopback only (keys fetched in clear text could be replaced)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return
    raise ValueError(f"{name} must be an https:// URL (http:// only on loopback), not {url!r}")


class Settings(BaseSettings):
    """Everything ASCOB reads from its environment. Created once, passed down."""

    model_config = SettingsConfigDict(env_prefix="ASCOB_", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    # secrets: never in the settings' repr (nor in any log line: ascob_api.logsetup.redact)
    database_url: str | None = Field(default=None, repr=False)
    root_token: str | None = Field(default=None, repr=False)
    job_manager_tokens: CsvList = Field(default_factory=list, repr=False)
    webhook_tokens: CsvList = Field(default_factory=list, repr=False)
    etcd_url: str | None = None
    etcd_api: Literal["v3", "v2"] = "v3"
    config: Path | None = None
    prefect_port: int = 4200
    # where the local Prefect server (and its UI) listens; the container image says 0.0.0.0
    prefect_host: str = "127.0.0.1"
    # the local Prefect server's address as browsers reach it (behind a proxy); default its own
    public_prefect_url: str | None = None
    prefect_api_url: str | None = Field(default=None, validation_alias="PREFECT_API_URL")

    max_file_bytes: int = 10 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024
    max_search_results: int = 1000
    idempotency_seconds: int = 24 * 3600
    callback_secret: str | None = Field(default=None, repr=False)
    callback_allowlist: CsvList = Field(default_factory=list)
    callback_retry_seconds: float = 24 * 3600
    callback_timeout: float = 10.0
    poll_interval: float = 5.0
    dispatch_retry_seconds: float = Field(default=120.0, ge=0)
    lock_lease_seconds: float = 30.0
    executor_id: str | None = None
    deployment: str = "ascob-job"
    public_url: str | None = None
    executor_ttl: float = 20.0
    executor_heartbeat: float = 5.0
    executor_concurrency: int = 5000
    executor_start_rate: float = 20.0
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"

    # OIDC: portals sign in with their identity provider's JWTs (ascob_api.oidc, docs/api.md)
    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None
    oidc_audience: str | None = None
    oidc_permissions_claim: str = "ascob_permissions"
    oidc_scope_claim: str = "ascob_scope"
    oidc_submitter_claim: str | None = None
    oidc_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    oidc_jwks_refetch_seconds: float = Field(default=30.0, ge=0)
    oidc_jwks_max_age_seconds: float = Field(default=3600.0, gt=0)
    oidc_http_timeout: float = Field(default=5.0, gt=0)

    @field_validator("job_manager_tokens", "webhook_tokens", "callback_allowlist", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check_oidc(self) -> Settings:
        """A half-configured OIDC is refused at start-up, never discovered on the first call."""
        if not self.oidc_enabled:
            if self.oidc_audience or self.oidc_submitter_claim:
                raise ValueError(
                    "ASCOB_OIDC_AUDIENCE / ASCOB_OIDC_SUBMITTER_CLAIM are set but neither "
                    "ASCOB_OIDC_ISSUER nor ASCOB_OIDC_JWKS_URL: set one of them (or unset these)"
                )
            return self
        if not self.oidc_audience:
            raise ValueError(
                "ASCOB_OIDC_AUDIENCE must be set when ASCOB_OIDC_ISSUER or ASCOB_OIDC_JWKS_URL is "
                "(the client id ASCOB's tokens are issued for, checked against the 'aud' claim)"
            )
        for name, url in (("ISSUER", self.oidc_issuer), ("JWKS_URL", self.oidc_jwks_url)):
            if url is not None:
                check_oidc_url(f"ASCOB_OIDC_{name}", url)
        for name, claim in (
            ("PERMISSIONS_CLAIM", self.oidc_permissions_claim),
            ("SCOPE_CLAIM", self.oidc_scope_claim),
            ("SUBMITTER_CLAIM", self.oidc_submitter_claim),
        ):
            if claim is not None and not claim.strip():
                raise ValueError(f"ASCOB_OIDC_{name} must not be empty")
        return self

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer or self.oidc_jwks_url)

    @field_validator("home", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'ascob.db'}"

    @cached_property
    def backend_config(self) -> dict[str, Any]:
        """The ``ASCOB_CONFIG`` TOML file (backend instances), or nothing."""
        if self.config is None:
            return {}
        with self.config.open("rb") as fh:
            return tomllib.load(fh)

    def secret_values(self) -> list[str]:
        """Every secret ASCOB knows of: tokens, the database password, the backends' tokens
        (the environment variables their ``token_env`` / ``password_env`` name). Never logged."""
        found = [
            self.root_token,
            *self.job_manager_tokens,
            *self.webhook_tokens,
            self.callback_secret,
        ]
        if self.database_url:
            password = urlsplit(self.database_url).password
            found.append(password)
        for section in self.backend_config.values():
            for instance in section.values() if isinstance(section, dict) else ():
                if not isinstance(instance, dict):
                    continue
                for name, variable in instance.items():
                    if name.endswith("_env") and isinstance(variable, str):
                        found.append(os.environ.get(variable))
        return [s for s in found if s]

    def ensure_root_token(self) -> str:
        """The root token; when none is configured, one is generated once and kept in ASCOB_HOME.

        ASCOB never runs with a well-known default secret.
        """
        if self.root_token:
            return self.root_token
        path = self.home / "root_token"
        if path.exists():
            self.root_token = path.read_text().strip()
        else:
            self.home.mkdir(parents=True, exist_ok=True)
            token = secrets.token_urlsafe(24)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
            self.root_token = token
        return self.root_token
