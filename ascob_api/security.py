"""Permissions and the ``X-Api-Token`` check."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum

from ascob_api.errors import BadRequest, Forbidden, Unauthorized
from ascob_api.repository import Repository
from ascob_api.settings import Settings


class Permission(StrEnum):
    job_submit = "job_submit"
    job_run_manual_start = "job_run_manual_start"
    job_run_resubmit = "job_run_resubmit"
    job_run_upload_files = "job_run_upload_files"
    job_run_abort = "job_run_abort"
    job_run_read = "job_run_read"
    job_run_output = "job_run_output"
    job_run_refresh = "job_run_refresh"
    job_run_search = "job_run_search"
    webhook_update_status = "webhook_update_status"
    webhook_identification_keys = "webhook_identification_keys"
    webhook_get_files = "webhook_get_files"
    security_token_write = "security_token_write"
    audit_read = "audit_read"


ALL = frozenset(Permission)
JOB_MANAGER = frozenset(p for p in Permission if p.value.startswith("job_"))
WEBHOOK = frozenset(p for p in Permission if p.value.startswith("webhook_"))


@dataclass(frozen=True)
class Identity:
    name: str
    permissions: frozenset[Permission]

    def require(self, permission: Permission) -> None:
        if permission not in self.permissions:
            raise Forbidden(f"token {self.name!r} lacks the permission {permission.value}")


def parse_permissions(names: list[str]) -> list[Permission]:
    out: list[Permission] = []
    for name in names:
        try:
            out.append(Permission(name))
        except ValueError:
            raise BadRequest(
                f"unknown permission {name!r}; expected some of "
                + ", ".join(p.value for p in Permission)
            ) from None
    return out


class TokenChecker:
    """Resolves a presented secret to an identity: fixed tokens first, then stored ones."""

    def __init__(self, settings: Settings, repo: Repository) -> None:
        self._fixed: list[tuple[str, str, frozenset[Permission]]] = []
        if settings.root_token:
            self._fixed.append((settings.root_token, "root", ALL))
        for i, secret in enumerate(settings.job_manager_tokens):
            self._fixed.append((secret, f"job-manager-{i + 1}", JOB_MANAGER))
        for i, secret in enumerate(settings.webhook_tokens):
            self._fixed.append((secret, f"webhook-{i + 1}", WEBHOOK))
        self._repo = repo

    def identify(self, secret: str | None) -> Identity:
        if not secret:
            raise Unauthorized("missing X-Api-Token header")
        for fixed_secret, name, perms in self._fixed:
            if hmac.compare_digest(fixed_secret.encode(), secret.encode()):
                return Identity(name, perms)
        token = self._repo.find_token(secret)
        if token is None:
            raise Unauthorized("invalid or expired token")
        perms = frozenset(Permission(p) for p in token.permissions if p in Permission.__members__)
        return Identity(token.identifier, perms)
