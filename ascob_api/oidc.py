"""``Authorization: Bearer <jwt>``: portals sign in with their identity provider's tokens.

The JOSE parts are PyJWT's. What ASCOB adds: only RS256 and ES256 (never ``none``, never an
HMAC: a token "signed" with the provider's *public* key as an HMAC secret is refused before any
key is looked at), the keys of the provider's JWKS (found through OIDC discovery, or named),
cached, and refetched when a token names an unknown ``kid`` (at most once per
``ASCOB_OIDC_JWKS_REFETCH_SECONDS``). Every refusal is a 401 that says why; keys that cannot be
fetched are a 503 (the token may be good: retry), and X-Api-Token callers are not affected.
Nothing of a token is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import jwt
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    InvalidTokenError,
    MissingRequiredClaimError,
    PyJWKError,
)

from ascob_api.errors import KeysUnavailable, Unauthorized
from ascob_api.security import Identity, Permission, Scope, parse_scope
from ascob_api.settings import Settings, check_oidc_url

log = logging.getLogger("ascob.oidc")

ALGORITHMS = ("RS256", "ES256")
_KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
MAX_JWKS_BYTES = 512 * 1024


class JwksKeys:
    """The provider's signing keys by ``kid``: fetched when first needed, again when a token
    names a key not in the set (rate-limited) or when the set is older than ``max_age``."""

    def __init__(
        self,
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self._issuer = settings.oidc_issuer
        self._jwks_url = settings.oidc_jwks_url
        self._timeout = settings.oidc_http_timeout
        self._refetch = settings.oidc_jwks_refetch_seconds
        self._max_age = settings.oidc_jwks_max_age_seconds
        self._transport = transport
        self.clock = clock  # monotonic seconds (tests move it)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last success
        self._tried_at: float | None = None  # last attempt
        self._last_error = ""
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        async with self._lock:
            now = self.clock()
            stale = self._fetched_at is None or now - self._fetched_at > self._max_age
            missing = self._find(kid, alg) is None
            may_try = self._tried_at is None or now - self._tried_at >= self._refetch
            if (stale or missing) and may_try:
                await self._refresh(now)
            if self._fetched_at is None:
                raise KeysUnavailable(
                    "the identity provider's signing keys cannot be fetched "
                    f"({self._last_error}); bearer tokens cannot be checked now, retry shortly "
                    "(X-Api-Token callers are not affected)"
                )
            found = self._find(kid, alg)
        if found is None:
            if kid is None:
                raise Unauthorized(
                    "the token names no key (kid) and the identity provider has no single "
                    f"{alg} key"
                )
            raise Unauthorized(f"unknown signing key: the identity provider has no key {kid!r}")
        return found

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        fitting = [k for k in self._keys.values() if k.algorithm_name == alg]
        return fitting[0] if len(fitting) == 1 else None

    async def _refresh(self, now: float) -> None:
        self._tried_at = now
        try:
            async with httpx.AsyncClient(
                transport=self._transport, timeout=self._timeout, follow_redirects=False
            ) as client:
                url = self._jwks_url or await self._discover(client)
                document = await _get_json(client, url)
            keys = _parse_jwks(document)
        except (httpx.HTTPError, ValueError) as exc:
            self._last_error = str(exc) or type(exc).__name__
            log.warning("OIDC: the signing keys cannot be fetched: %s", self._last_error)
            return
        self._keys = keys
        self._fetched_at = now
        log.info("OIDC: %d signing key(s) fetched", len(keys))

    async def _discover(self, client: httpx.AsyncClient) -> str:
        assert self._issuer is not None
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await _get_json(client, url)
        if document.get("issuer") != self._issuer:
            raise ValueError(
                f"the discovery document at {url} names the issuer {document.get('issuer')!r}, "
                f"not {self._issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise ValueError(f"the discovery document at {url} has no jwks_uri")
        check_oidc_url(f"the jwks_uri of {url}", jwks_uri)  # https, as the issuer
        self._jwks_url = jwks_uri  # discovery once; the keys' address does not move
        return jwks_uri


async def _get_json(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    try:
        response = await client.get(url, headers={"Accept": "application/json"})
    except httpx.TimeoutException:
        raise ValueError(f"{url} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise ValueError(f"{url}: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise ValueError(f"{url} answered {response.status_code}")
    if len(response.content) > MAX_JWKS_BYTES:
        raise ValueError(f"{url} answered more than {MAX_JWKS_BYTES} bytes")
    try:
        document = response.json()
    except ValueError:
        raise ValueError(f"{url} did not answer JSON") from None
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return document


def _parse_jwks(document: dict[str, Any]) -> dict[str, jwt.PyJWK]:
    """The signature keys of RS256/ES256 with a kid; any other key is left out (an unusable
    key in the set must not make the good ones unusable)."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str):
            continue
        if entry.get("alg") not in (None, *ALGORITHMS):
            continue
        try:
            key = jwt.PyJWK(entry)
        except (PyJWKError, InvalidKeyError, ValueError, TypeError):
            continue
        if key.algorithm_name in ALGORITHMS:
            keys[kid] = key
    return keys


class OidcVerifier:
    """Checks a bearer JWT and makes the caller's :class:`Identity` of its claims."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        assert settings.oidc_audience is not None
        self._issuer = settings.oidc_issuer
        self._audience = settings.oidc_audience
        self._leeway = settings.oidc_leeway_seconds
        self._permissions_claim = settings.oidc_permissions_claim
        self._scope_claim = settings.oidc_scope_claim
        self._submitter_claim = settings.oidc_submitter_claim
        self.keys = JwksKeys(settings, transport)

    async def identify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except DecodeError:
            raise Unauthorized("malformed bearer token (not a JWS compact JWT)") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthorized(
                f"unsupported algorithm {alg!r}: only {', '.join(ALGORITHMS)} are accepted"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("malformed bearer token: 'kid' is not a string")
        key = await self.keys.key(kid, alg)
        if key.algorithm_name != alg or _KEY_TYPES[alg] != key.key_type:
            raise Unauthorized(f"the key {kid!r} is not a {alg} key")
        claims = self._decode(token, key, alg)
        return self._identity(claims)

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        required = ["exp", "aud", "sub"] + (["iss"] if self._issuer else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": required, "verify_iss": bool(self._issuer)},
            )
        except ExpiredSignatureError:
            raise Unauthorized("the bearer token has expired") from None
        except ImmatureSignatureError:
            raise Unauthorized("the bearer token is not yet valid (nbf or iat ahead)") from None
        except InvalidIssuerError:
            raise Unauthorized(f"wrong issuer: ASCOB accepts tokens of {self._issuer}") from None
        except InvalidAudienceError:
            raise Unauthorized(
                f"wrong audience: the token is not issued for {self._audience!r}"
            ) from None
        except InvalidSignatureError:
            raise Unauthorized("bad signature") from None
        except MissingRequiredClaimError as exc:
            raise Unauthorized(f"the bearer token lacks the claim {exc.claim!r}") from None
        except InvalidAlgorithmError:
            raise Unauthorized(f"unsupported algorithm {alg!r}") from None
        except DecodeError:
            raise Unauthorized("malformed bearer token") from None
        except InvalidTokenError as exc:
            raise Unauthorized(f"invalid bearer token: {exc}") from None
        return claims

    def _identity(self, claims: dict[str, Any]) -> Identity:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 200:
            raise Unauthorized("the bearer token's 'sub' must be a string of 1-200 characters")
        name = f"oidc:{sub}"
        client = claims.get("azp") or claims.get("client_id")
        if isinstance(client, str) and client and client != sub:
            name += f" via {client[:46]}"  # the actor stays within the audit filter's 256
        return Identity(
            name,
            self._permissions(claims.get(self._permissions_claim)),
            scope=self._scope(claims.get(self._scope_claim)),
            submitter=self._submitter(claims),
        )

    def _permissions(self, value: Any) -> frozenset[Permission]:
        if value is None:
            return frozenset()
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Unauthorized(
                f"the claim {self._permissions_claim!r} must be a list of permission names or "
                "a space-separated string"
            )
        # names ASCOB does not know are another application's roles: not an error
        return frozenset(Permission(v) for v in value if v in Permission.__members__)

    def _scope(self, value: Any) -> Scope | None:
        if value is None:
            return None
        try:
            return parse_scope(value)
        except ValueError as exc:
            raise Unauthorized(f"the claim {self._scope_claim!r} is not a scope: {exc}") from None

    def _submitter(self, claims: dict[str, Any]) -> str | None:
        if self._submitter_claim is None:
            return None
        value = claims.get(self._submitter_claim)
        if not isinstance(value, str) or not value or len(value) > 256:
            raise Unauthorized(
                f"the bearer token lacks the claim {self._submitter_claim!r} "
                "(ASCOB_OIDC_SUBMITTER_CLAIM: the submitter, a string of 1-256 characters)"
            )
        return value
