"""Bearer JWTs (issue 25): a loopback identity provider (discovery + JWKS, a Starlette app on
127.0.0.1) with RSA and EC keys generated here, and the API in-process. The tests that talk to
the provider are in the integration layer (a socket); the rest stay unit."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ascob_api.cli import load_settings
from ascob_api.main import create_app
from ascob_api.oidc import OidcVerifier
from ascob_api.security import Scope
from ascob_api.service import Services
from ascob_api.settings import Settings
from tests.fakes.server import ServerThread, free_port
from tests.unit.conftest import DUMMY, ROOT, WEBHOOK

AUDIENCE = "ascob"


@dataclass
class Key:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        maker = jwt.algorithms.RSAAlgorithm if self.alg == "RS256" else jwt.algorithms.ECAlgorithm
        data: dict[str, Any] = json.loads(maker.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def rsa_key(kid: str) -> Key:
    return Key(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> Key:
    return Key(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass
class Provider:
    """A Keycloak-like identity provider: discovery and JWKS; ``down`` answers 503."""

    keys: list[Key]
    server: ServerThread | None = None
    down: bool = False
    jwks_uri: str | None = None  # what discovery names; None: its own
    hang: float = 0.0  # seconds the JWKS takes to answer
    jwks_fetches: int = 0
    seen_auth: list[str] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/realms/acme"

    def app(self) -> Starlette:
        async def discovery(request: Request) -> Response:
            if self.down:
                return PlainTextResponse("down", status_code=503)
            jwks_uri = self.jwks_uri or f"{self.issuer}/protocol/openid-connect/certs"
            return JSONResponse({"issuer": self.issuer, "jwks_uri": jwks_uri})

        async def certs(request: Request) -> Response:
            self.jwks_fetches += 1
            await asyncio.sleep(self.hang)
            if self.down:
                return PlainTextResponse("down", status_code=503)
            return JSONResponse({"keys": [k.jwk() for k in self.keys]})

        return Starlette(
            routes=[
                Route("/realms/acme/.well-known/openid-configuration", discovery),
                Route("/realms/acme/protocol/openid-connect/certs", certs),
            ]
        )

    def token(self, key: Key | None = None, **claims: Any) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "3f1c-user",
            "azp": "portal-a",
            "iat": now,
            "exp": now + 300,
            "ascob_permissions": ["job_submit", "job_run_read"],
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": key.kid})


@pytest.fixture
def provider() -> Iterator[Provider]:
    made = Provider([rsa_key("rsa-1"), ec_key("ec-1")])
    made.server = ServerThread(made.app())
    made.server.start()
    yield made
    made.server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def oidc_settings(tmp_path: Path, issuer: str, **extra: Any) -> Settings:
    return Settings(
        home=tmp_path,
        root_token=ROOT,
        webhook_tokens=[WEBHOOK],
        job_manager_tokens=[],
        oidc_issuer=issuer,
        oidc_audience=AUDIENCE,
        **{"oidc_http_timeout": 2.0, **extra},
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


def client_for(services: Services, settings: Settings, clock: Clock) -> TestClient:
    services.settings = settings
    app = create_app(services)
    app.state.oidc.keys.clock = clock
    return TestClient(app)


@pytest.fixture
def oidc_api(
    services: Services, provider: Provider, tmp_path: Path, clock: Clock
) -> Iterator[TestClient]:
    with client_for(services, oidc_settings(tmp_path, provider.issuer), clock) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refusal(client: TestClient, token: str) -> str:
    r = client.get("/api/security/whoami", headers=bearer(token))
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    return str(r.json()["error"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A JWS made by hand (PyJWT rightly refuses to make these two)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b"" if secret is None else hmac.digest(secret, signing_input.encode(), "sha256")
    return f"{signing_input}.{_b64(signature)}"


# ---------------------------------------------------------------------------- accepted


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_a_valid_token_signs_in_with_the_permissions_of_its_claim(
    oidc_api: TestClient, provider: Provider, kind: str
) -> None:
    key = next(k for k in provider.keys if k.alg == kind)
    r = oidc_api.get("/api/security/whoami", headers=bearer(provider.token(key)))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "authorities": ["job_run_read", "job_submit"],
        "identifier": "oidc:3f1c-user via portal-a",
    }


@pytest.mark.integration
def test_permissions_as_a_space_separated_string_and_unknown_roles_ignored(
    oidc_api: TestClient, provider: Provider
) -> None:
    token = provider.token(ascob_permissions="job_run_search offline_access audit_read")
    r = oidc_api.get("/api/security/whoami", headers=bearer(token))
    assert r.json()["authorities"] == ["audit_read", "job_run_search"]


@pytest.mark.integration
def test_without_the_permission_the_call_is_403_not_401(
    oidc_api: TestClient, provider: Provider
) -> None:
    token = provider.token(ascob_permissions=["job_run_read"])
    r = oidc_api.post("/api/runs", json={"jobSpec": {"labels": DUMMY}}, headers=bearer(token))
    assert r.status_code == 403 and "job_submit" in r.json()["error"]


@pytest.mark.integration
def test_submitting_with_a_bearer_token_audits_its_sub_and_client(
    oidc_api: TestClient, provider: Provider
) -> None:
    r = oidc_api.post(
        "/api/runs",
        json={"jobSpec": {"labels": DUMMY, "submitter": "carol"}},
        headers=bearer(provider.token(azp=None, client_id="portal-b")),
    )
    assert r.status_code == 200, r.text
    run_id = r.json()["runId"]
    audit = oidc_api.get("/api/audit", params={"runId": run_id}, headers={"X-Api-Token": ROOT})
    assert [(e["actor"], e["action"]) for e in audit.json()["items"]] == [
        ("oidc:3f1c-user via portal-b", "submit")
    ]
    run = oidc_api.get(f"/api/runs/{run_id}", headers=bearer(provider.token()))
    assert run.json()["submitter"] == "carol"  # no submitter claim set: the spec's


@pytest.mark.integration
def test_a_small_clock_skew_is_tolerated(oidc_api: TestClient, provider: Provider) -> None:
    now = int(time.time())
    token = provider.token(exp=now - 10, nbf=now + 10)
    assert oidc_api.get("/api/security/whoami", headers=bearer(token)).status_code == 200


@pytest.mark.integration
async def test_the_scope_claim_is_kept_on_the_identity(provider: Provider, tmp_path: Path) -> None:
    verifier = OidcVerifier(oidc_settings(tmp_path, provider.issuer))
    scope = {"backends": ["jenkinsBackend"], "labels": {"jenkins_project_name": ["team-a/*"]}}
    identity = await verifier.identify(provider.token(ascob_scope=scope))
    assert identity.scope == Scope(("jenkinsBackend",), {"jenkins_project_name": ("team-a/*",)})
    assert (await verifier.identify(provider.token())).scope is None


@pytest.mark.integration
def test_a_scoped_token_is_refused_rather_than_let_out_of_its_fence(
    oidc_api: TestClient, provider: Provider
) -> None:
    scope = {"backends": ["jenkinsBackend"]}
    headers = bearer(provider.token(ascob_scope=scope))
    assert oidc_api.get("/api/security/whoami", headers=headers).status_code == 200
    r = oidc_api.post("/api/runs", json={"jobSpec": {"labels": DUMMY}}, headers=headers)
    assert r.status_code == 403 and "cannot fence runs by scope yet" in r.json()["error"]


# ---------------------------------------------------------------------------- refused


@pytest.mark.integration
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": -120}, "expired"),  # seconds from now: the times are made when the test runs
        ({"nbf": 120}, "not yet valid"),
        ({"iss": "https://evil.example/realms/acme"}, "wrong issuer"),
        ({"aud": "another-app"}, "wrong audience"),
        ({"exp": None}, "lacks the claim 'exp'"),
        ({"ascob_permissions": 7}, "must be a list of permission names"),
        ({"ascob_scope": {"backend": ["x"]}}, "unknown scope field backend"),
    ],
)
def test_each_refusal_says_why(
    oidc_api: TestClient, provider: Provider, claims: dict[str, Any], reason: str
) -> None:
    now = int(time.time())
    claims = {k: now + v if k in ("exp", "nbf") and v is not None else v for k, v in claims.items()}
    assert reason in refusal(oidc_api, provider.token(**claims))


@pytest.mark.integration
def test_a_bad_signature_is_refused(oidc_api: TestClient, provider: Provider) -> None:
    other = rsa_key("rsa-1")  # same kid, another private key
    assert refusal(oidc_api, provider.token(other)) == "bad signature"


@pytest.mark.integration
def test_alg_none_is_refused(oidc_api: TestClient, provider: Provider) -> None:
    token = forged({"alg": "none", "kid": "rsa-1"}, {"sub": "x", "aud": AUDIENCE}, None)
    assert "unsupported algorithm 'none'" in refusal(oidc_api, token)


@pytest.mark.integration
def test_hs256_signed_with_the_public_key_is_refused(
    oidc_api: TestClient, provider: Provider
) -> None:
    key = provider.keys[0]
    now = int(time.time())
    claims = {"iss": provider.issuer, "aud": AUDIENCE, "sub": "x", "exp": now + 300}
    for secret in (key.public_pem(), json.dumps(key.jwk()).encode()):
        token = forged({"alg": "HS256", "kid": key.kid}, claims, secret)
        assert "unsupported algorithm 'HS256'" in refusal(oidc_api, token)


def test_a_bearer_token_without_oidc_configured_is_refused_clearly(api: TestClient) -> None:
    r = api.get("/api/security/whoami", headers={"X-Api-Token": "", "Authorization": "Bearer x"})
    assert r.status_code == 401 and "OIDC is not configured" in r.json()["error"]


# ---------------------------------------------------------------------------- keys


@pytest.mark.integration
def test_a_rotated_key_is_fetched_and_unknown_kids_refetch_at_most_every_30_s(
    oidc_api: TestClient, provider: Provider, clock: Clock
) -> None:
    assert oidc_api.get("/api/security/whoami", headers=bearer(provider.token())).status_code == 200
    assert provider.jwks_fetches == 1
    new = rsa_key("rsa-2")
    provider.keys = [new]  # the provider rotates

    clock.now += 5  # too soon after the last fetch: no refetch, an unknown key
    assert "unknown signing key" in refusal(oidc_api, provider.token(new))
    assert provider.jwks_fetches == 1

    clock.now += 30
    r = oidc_api.get("/api/security/whoami", headers=bearer(provider.token(new)))
    assert r.status_code == 200, r.text
    assert provider.jwks_fetches == 2

    ghost = rsa_key("ghost")  # a kid nobody publishes: refused, and no fetch storm
    for _ in range(5):
        assert "unknown signing key: the identity provider has no key 'ghost'" in refusal(
            oidc_api, provider.token(ghost)
        )
    assert provider.jwks_fetches == 2
    clock.now += 31
    refusal(oidc_api, provider.token(ghost))
    assert provider.jwks_fetches == 3


@pytest.mark.integration
def test_keys_that_cannot_be_fetched_are_a_503_and_api_tokens_still_work(
    services: Services, provider: Provider, tmp_path: Path, clock: Clock
) -> None:
    provider.down = True
    with client_for(services, oidc_settings(tmp_path, provider.issuer), clock) as client:
        r = client.get("/api/security/whoami", headers=bearer(provider.token()))
        assert r.status_code == 503, r.text
        assert "signing keys cannot be fetched" in r.json()["error"]
        assert "answered 503" in r.json()["error"]
        assert r.headers["Retry-After"]
        who = client.get("/api/security/whoami", headers={"X-Api-Token": ROOT})
        assert who.status_code == 200 and who.json()["identifier"] == "root"

        provider.down = False  # back: the next attempt after the pause succeeds
        clock.now += 31
        assert client.get("/api/security/whoami", headers=bearer(provider.token())).is_success


@pytest.mark.integration
def test_a_provider_nobody_listens_on_is_a_503(
    services: Services, provider: Provider, tmp_path: Path, clock: Clock
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/realms/acme"
    with client_for(services, oidc_settings(tmp_path, nowhere), clock) as client:
        r = client.get("/api/security/whoami", headers=bearer(provider.token()))
        assert r.status_code == 503 and "cannot be fetched" in r.json()["error"]


@pytest.mark.integration
def test_a_provider_too_slow_to_answer_is_a_503_within_the_timeout(
    services: Services, provider: Provider, tmp_path: Path, clock: Clock
) -> None:
    provider.hang = 3.0
    settings = oidc_settings(tmp_path, provider.issuer, oidc_http_timeout=0.3)
    with client_for(services, settings, clock) as client:
        r = client.get("/api/security/whoami", headers=bearer(provider.token()))
        assert r.status_code == 503 and "did not answer in time" in r.json()["error"]


@pytest.mark.integration
def test_a_named_jwks_url_without_discovery_and_a_token_without_kid(
    services: Services, provider: Provider, tmp_path: Path, clock: Clock
) -> None:
    settings = Settings(
        home=tmp_path,
        root_token=ROOT,
        oidc_jwks_url=f"{provider.issuer}/protocol/openid-connect/certs",
        oidc_audience=AUDIENCE,
    )
    key = provider.keys[1]  # the only ES256 key: a token naming no kid finds it
    now = int(time.time())
    claims = {"aud": AUDIENCE, "sub": "svc", "exp": now + 60, "iss": "whoever"}
    token = jwt.encode(claims, key.private, algorithm="ES256")
    with client_for(services, settings, clock) as client:
        r = client.get("/api/security/whoami", headers=bearer(token))
        assert r.status_code == 200, r.text
        assert r.json() == {"authorities": [], "identifier": "oidc:svc"}
    provider.down = True  # discovery was never asked
    assert provider.jwks_fetches == 1


@pytest.mark.integration
def test_discovery_naming_keys_over_plain_http_elsewhere_is_not_followed(
    oidc_api: TestClient, provider: Provider
) -> None:
    provider.jwks_uri = "http://keys.example/certs"
    r = oidc_api.get("/api/security/whoami", headers=bearer(provider.token()))
    assert r.status_code == 503 and "must be an https:// URL" in r.json()["error"]
    assert provider.jwks_fetches == 0


# ---------------------------------------------------------------------------- submitter


@pytest.mark.integration
def test_with_a_submitter_claim_the_token_submits_as_that_user_only(
    services: Services, provider: Provider, tmp_path: Path, clock: Clock
) -> None:
    settings = oidc_settings(tmp_path, provider.issuer, oidc_submitter_claim="preferred_username")
    with client_for(services, settings, clock) as client:
        alice = bearer(provider.token(preferred_username="alice"))
        r = client.post("/api/runs", json={"jobSpec": {"labels": DUMMY}}, headers=alice)
        assert r.status_code == 200, r.text
        run_id = r.json()["runId"]
        run = client.get(f"/api/runs/{run_id}", headers=alice).json()
        assert run["submitter"] == "alice"

        spec = {"labels": DUMMY, "submitter": "bob"}
        r = client.post("/api/runs", json={"jobSpec": spec}, headers=alice)
        assert r.status_code == 403 and "'alice' only" in r.json()["error"]
        spec["submitter"] = "alice"
        assert client.post("/api/runs", json={"jobSpec": spec}, headers=alice).is_success

        may_resubmit = bearer(
            provider.token(preferred_username="alice", ascob_permissions=["job_run_resubmit"])
        )
        path = f"/api/runs/{run_id}/resubmit"
        r = client.post(path, params={"submitter": "bob"}, headers=may_resubmit)
        assert r.status_code == 403 and "'alice' only" in r.json()["error"]
        r = client.post(path, params={"submitter": "alice"}, headers=may_resubmit)
        assert r.status_code == 200, r.text

        assert "lacks the claim 'preferred_username'" in refusal(client, provider.token())


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"oidc_issuer": "https://idp.example/realms/a"}, "ASCOB_OIDC_AUDIENCE must be set"),
        ({"oidc_jwks_url": "https://idp.example/certs"}, "ASCOB_OIDC_AUDIENCE must be set"),
        ({"oidc_audience": "ascob"}, "neither ASCOB_OIDC_ISSUER nor ASCOB_OIDC_JWKS_URL"),
        (
            {"oidc_issuer": "http://idp.example/realms/a", "oidc_audience": "ascob"},
            "must be an https:// URL",
        ),
        (
            {"oidc_issuer": "https://idp.example", "oidc_audience": "a", "oidc_scope_claim": " "},
            "ASCOB_OIDC_SCOPE_CLAIM must not be empty",
        ),
    ],
)
def test_a_half_configured_oidc_is_a_start_up_error(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(home=tmp_path, **values)


def test_the_hmac_forgery_helper_is_a_real_hs256() -> None:
    """The forged token above is the attack itself: PyJWT accepts it as HS256 with that secret."""
    secret = b"s" * 32
    token = forged({"alg": "HS256"}, {"sub": "x"}, secret)
    assert jwt.decode(token, secret, algorithms=["HS256"]) == {"sub": "x"}


@pytest.mark.integration
def test_no_token_content_reaches_the_log(
    services: Services, provider: Provider, tmp_path: Path, clock: Clock, caplog: Any
) -> None:
    caplog.set_level("DEBUG")
    tokens = [provider.token(), provider.token(aud="x"), provider.token(rsa_key("ghost"))]
    with client_for(services, oidc_settings(tmp_path, provider.issuer), clock) as client:
        for token in tokens:
            client.get("/api/security/whoami", headers=bearer(token))
        provider.down = True
        clock.now += 3600 * 2  # the keys are old: refetched, and the fetch fails (logged)
        client.get("/api/security/whoami", headers=bearer(tokens[0]))
    assert any("cannot be fetched" in r.getMessage() for r in caplog.records)
    for token in tokens:
        payload = token.split(".")[1]
        assert not [r for r in caplog.records if payload in r.getMessage()]


def test_ascob_serve_names_the_missing_setting_and_stops(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("ASCOB_HOME", str(tmp_path))
    monkeypatch.setenv("ASCOB_OIDC_ISSUER", "https://sso.acme.example/realms/acme")
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert stopped.value.code == 2
    assert "configuration error: ASCOB_OIDC_AUDIENCE must be set" in capsys.readouterr().err
