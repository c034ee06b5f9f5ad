"""Callbacks: a run that names a ``callbackUrl`` has its final RunInfo POSTed there, signed.

- **Durable, at least once.** When a run becomes final, the same transaction that writes its
  final status records a delivery (``callback_deliveries``). Every API process (``ascob serve``,
  ``ascob api``) runs a :class:`CallbackSender` that claims due deliveries with a conditional
  update (a lease, so two replicas never send one attempt twice at once, and a crashed sender's
  claim runs out) and POSTs them; failures are retried with exponential backoff (1 s doubling,
  capped at 10 min) until ``ASCOB_CALLBACK_RETRY_SECONDS`` after the run ended. A restart loses
  nothing: the next sender finds the delivery where it was.
- **Signed.** Headers ``X-Ascob-Timestamp`` (Unix seconds) and ``X-Ascob-Signature:
  sha256=<hex>``, the HMAC-SHA256 of ``"<timestamp>.<body>"`` with ``ASCOB_CALLBACK_SECRET``
  (docs/api.md has a verification snippet).
- **Safe destinations.** A callback URL makes ASCOB send requests inside the network, so only
  destinations in ``ASCOB_CALLBACK_ALLOWLIST`` (host names, ``*.domain`` suffixes, IP networks)
  are accepted, checked at submission and again, against the addresses the name resolves to, at
  each attempt; link-local and cloud metadata addresses are never called, whatever the list
  says; redirects are not followed (a 3xx is a failed attempt).
- **Isolated.** Each attempt has its own timeout and runs beside the others (16 at once): a slow
  or dead receiver delays nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import httpx

from ascob_api.errors import BadRequest
from ascob_api.models import CallbackDelivery
from ascob_api.repository import AsyncRepository, Repository
from ascob_api.settings import Settings
from ascob_api.wire import RunInfo
from ascob_flows.clock import utcnow
from ascob_flows.executor.support import transient
from ascob_flows.retry import Backoff

log = logging.getLogger("ascob.callbacks")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
NEVER = [
    ipaddress.ip_network("169.254.0.0/16"),  # link-local, cloud metadata (169.254.169.254)
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::/32"),  # AWS metadata over IPv6
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud metadata
    ipaddress.ip_network("0.0.0.0/8"),
]
RETRY = Backoff(first=1.0, cap=600.0)
CLAIM_SECONDS = 60.0
SIGNATURE_HEADER = "X-Ascob-Signature"
TIMESTAMP_HEADER = "X-Ascob-Timestamp"


@dataclass(frozen=True)
class Allowlist:
    hosts: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                hosts.add(entry)
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.hosts or self.suffixes or self.networks)

    def allows_name(self, host: str) -> bool:
        host = host.lower()
        return host in self.hosts or any(host.endswith(s) for s in self.suffixes)

    def allows_address(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if any(ip in net for net in NEVER):
            return False
        return any(ip in net for net in self.networks if net.version == ip.version)


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def check_url(settings: Settings, url: str) -> None:
    """At submission: a valid http(s) URL whose host the allowlist names."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("callbackUrl must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise BadRequest("callbackUrl must not carry credentials")
    if not settings.callback_secret:
        raise BadRequest("callbacks are off: the server has no ASCOB_CALLBACK_SECRET")
    allow = Allowlist.parse(settings.callback_allowlist)
    host = parts.hostname
    literal = _literal_ip(host)
    if literal is not None and any(ipaddress.ip_address(literal) in n for n in NEVER):
        raise BadRequest(f"callbackUrl {host} is a link-local or metadata address: never called")
    if literal is None and allow.allows_name(host):
        return
    if literal is not None:
        addresses = [literal]
    elif allow.networks:  # a name may resolve into an allowed network
        try:
            addresses = _resolve(host, parts.port or 80)
        except OSError as exc:
            raise BadRequest(f"callbackUrl host {host!r} does not resolve: {exc}") from None
    else:
        addresses = []
    if not addresses or not all(allow.allows_address(a) for a in addresses):
        raise BadRequest(f"callbackUrl host {host!r} is not in ASCOB_CALLBACK_ALLOWLIST")


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def destination_allowed(allow: Allowlist, url: str) -> str | None:
    """At each attempt: None if the URL may be called now, else why not."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = _literal_ip(host)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [literal] if literal else await asyncio.to_thread(_resolve, host, port)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if any(ip in net for net in NEVER):
            return f"{host} resolves to {address}, a link-local or metadata address"
    if literal is None and allow.allows_name(host):
        return None
    if all(allow.allows_address(a) for a in addresses):
        return None
    return f"{host} ({', '.join(addresses)}) is not in ASCOB_CALLBACK_ALLOWLIST"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


class CallbackSender:
    """Sends due deliveries; one per API process, every replica may run one."""

    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        transport: httpx.AsyncBaseTransport | None = None,
        interval: float = 1.0,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.db = AsyncRepository(repo)
        self.interval = interval
        self.allow = Allowlist.parse(settings.callback_allowlist)
        self._transport = transport
        self._limit = asyncio.Semaphore(16)
        self._inflight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        async with httpx.AsyncClient(
            transport=self._transport,
            timeout=httpx.Timeout(self.settings.callback_timeout),
            follow_redirects=False,
        ) as client:
            while True:
                try:
                    await self.send_due(client)
                except Exception as exc:
                    log.warning("callback round failed: %r", exc, exc_info=not transient(exc))
                await asyncio.sleep(self.interval)

    async def send_due(self, client: httpx.AsyncClient) -> None:
        room = 16 - len(self._inflight)
        if room <= 0:
            return
        due = await self.db.claim_callbacks(room, CLAIM_SECONDS)
        for delivery in due:
            task = asyncio.create_task(self._attempt(client, delivery))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _attempt(self, client: httpx.AsyncClient, delivery: CallbackDelivery) -> None:
        async with self._limit:
            error, status = await self._post(client, delivery)
        assert delivery.id is not None
        if error is None:
            await self.db.callback_delivered(delivery.id, status)
            await self.db.audit("ascob", "callback_delivered", delivery.run_id, status=status)
            log.info("run %s: callback delivered (HTTP %s)", delivery.run_id, status)
            return
        give_up = delivery.deadline <= utcnow()
        retry_at = utcnow() + timedelta(seconds=RETRY.delay(max(0, delivery.attempts - 1)))
        await self.db.callback_failed(delivery.id, status, error, None if give_up else retry_at)
        if give_up:
            await self.db.audit("ascob", "callback_failed", delivery.run_id, error=error)
            log.error("run %s: callback given up: %s", delivery.run_id, error)
        else:
            log.warning(
                "run %s: callback attempt %s failed (%s); again at %s",
                delivery.run_id,
                delivery.attempts,
                error,
                retry_at.isoformat(timespec="seconds"),
            )

    async def _post(
        self, client: httpx.AsyncClient, delivery: CallbackDelivery
    ) -> tuple[str | None, int | None]:
        refused = await destination_allowed(self.allow, delivery.url)
        if refused is not None:
            return refused, None
        run = await self.db.get_run(delivery.run_id)
        body = RunInfo.of(run).model_dump_json(by_alias=True).encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self.settings.callback_secret or "", timestamp, body),
            "User-Agent": "ascob-callback",
        }
        try:
            response = await client.post(delivery.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, None
        if 200 <= response.status_code < 300:
            return None, response.status_code
        if 300 <= response.status_code < 400:
            return f"HTTP {response.status_code}: redirects are not followed", response.status_code
        return f"HTTP {response.status_code}", response.status_code
