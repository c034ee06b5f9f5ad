"""Permissions, the caller's identity and the ``X-Api-Token`` check (bearer JWTs:
:mod:`ascob_api.oidc`)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

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
class Scope:
    """Where a caller may act: these backends only (None: any), and runs whose every listed
    label matches one of its patterns (exact or ``*`` globs). Parsed and kept on the identity;
    fencing runs by it is the scoped tokens' part of issue 25: until then a scoped caller is
    refused every permission (:meth:`Identity.require`)."""

    backends: tuple[str, ...] | None = None
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.backends is not None:
            out["backends"] = list(self.backends)
        if self.labels:
            out["labels"] = {k: list(v) for k, v in self.labels.items()}
        return out


def _names(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what} must be a list of non-empty strings")
    return tuple(value)


def parse_scope(value: Any) -> Scope:
    """``{"backends": [...], "labels": {"name": ["pattern", ...]}}``; ValueError says what is
    wrong (an unknown field is an error: a misspelt fence must not silently open)."""
    if not isinstance(value, dict):
        raise ValueError("a scope must be an object with 'backends' and/or 'labels'")
    unknown = sorted(set(value) - {"backends", "labels"})
    if unknown:
        raise ValueError(f"unknown scope field {', '.join(unknown)}; accepted: backends, labels")
    backends = _names(value["backends"], "scope.backends") if "backends" in value else None
    labels_in = value.get("labels", {})
    if not isinstance(labels_in, dict):
        raise ValueError("scope.labels must be an object of label name to a list of patterns")
    labels = {str(k): _names(v, f"scope.labels.{k}") for k, v in labels_in.items()}
    return Scope(backends, labels)


@dataclass(frozen=True)
class Identity:
    """Who calls: ``name`` is the audit's actor (a token's identifier, root, job-manager-N,
    webhook-N, ``oidc:<sub>``...). ``submitter``: the only submitter this caller may submit
    for (an OIDC token with ASCOB_OIDC_SUBMITTER_CLAIM), None: any."""

    name: str
    permissions: frozenset[Permission]
    scope: Scope | None = None
    submitter: str | None = None

    def require(self, permission: Permission) -> None:
        if permission not in self.permissions:
            raise Forbidden(f"token {self.name!r} lacks the permission {permission.value}")
        if self.scope is not None:
            # fail closed: until runs are fenced by scope, a caller meant to be fenced in gets
            # nothing rather than everything (whoami still answers)
            raise Forbidden(
                f"token {self.name!r} carries a scope, and this ASCOB cannot fence runs by "
                "scope yet: use a token without a scope"
            )

    def submitter_for(self, requested: str | None) -> str | None:
        """The submitter a run asked for by this caller gets; a 403 if it may not be it."""
        if self.submitter is None:
            return requested
        if requested is not None and requested != self.submitter:
            raise Forbidden(
                f"this token submits as {self.submitter!r} only; the request names "
                f"{requested!r} (leave submitter out, or name {self.submitter!r})"
            )
        return self.submitter


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
