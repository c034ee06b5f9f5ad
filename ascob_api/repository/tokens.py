"""The tokens aggregate: API tokens, kept as the SHA-256 of their secret."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import delete
from sqlmodel import col, select

from ascob_api.models import ApiToken
from ascob_api.repository.base import RecordNotFound, Store, hash_secret
from ascob_flows.clock import utcnow


class Tokens(Store):
    def create_token(self, identifier: str, permissions: list[str], expiry_seconds: int) -> str:
        secret = secrets.token_urlsafe(32)
        expires = utcnow() + timedelta(seconds=expiry_seconds) if expiry_seconds else None
        with self.session() as s:
            s.exec(delete(ApiToken).where(col(ApiToken.identifier) == identifier))
            s.add(
                ApiToken(
                    identifier=identifier,
                    secret_hash=hash_secret(secret),
                    permissions=permissions,
                    expires_at=expires,
                )
            )
            s.commit()
        return secret

    def delete_token(self, identifier: str) -> None:
        with self.session() as s:
            token = s.get(ApiToken, identifier)
            if token is None:
                raise RecordNotFound(f"token {identifier!r} not found")
            s.delete(token)
            s.commit()

    def find_token(self, secret: str) -> ApiToken | None:
        with self.reading() as s:
            token = s.exec(
                select(ApiToken).where(ApiToken.secret_hash == hash_secret(secret))
            ).first()
        if token is None or (token.expires_at is not None and token.expires_at <= utcnow()):
            return None
        return token

    def list_tokens(self) -> list[ApiToken]:
        with self.reading() as s:
            return list(s.exec(select(ApiToken).order_by(col(ApiToken.identifier))).all())
