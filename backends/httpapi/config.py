"""One ``[http.<name>]`` instance of ``httpBackend``, read and checked once at start-up.

Checking happens here, not at each request: every template is scanned for the variables it
names, and a name that the template's place does not provide makes the instance *broken* (the
backend keeps the message and refuses specs that select the instance with a 400, naming the
variable). Which variables each place may use:

=====================================  ==============================================
place                                  variables
=====================================  ==============================================
``start`` url, body, headers           ``run_id``, ``webhook_id``, ``param.<NAME>``
``status``/``stop``/``force_stop``     ``run_id``, ``job_id``
``output`` url                         ``run_id``, ``job_id``, ``offset``
any header (also instance ``headers``) the place's variables + ``env.<NAME>`` for a NAME
                                       listed in ``secret_env``
=====================================  ==============================================

Secrets (``env.<NAME>``) are only allowed in header values, so they never appear in a URL, a
body, a log line or an error message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backends.base import BackendStatus
from backends.httpapi.templates import JsonPath, names, variables_in

__all__ = ["ConfigError", "Instance", "OutputSpec", "RequestSpec", "StartSpec", "StatusSpec"]

START_VARIABLES = frozenset({"run_id", "webhook_id"})
FOLLOW_VARIABLES = frozenset({"run_id", "job_id"})
OUTPUT_VARIABLES = FOLLOW_VARIABLES | {"offset"}
STATUS_WORDS = {
    "queued": BackendStatus.QUEUED,
    "running": BackendStatus.RUNNING,
    "succeeded": BackendStatus.SUCCEEDED,
    "failed": BackendStatus.FAILED,
    "aborted": BackendStatus.ABORTED,
}
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


class ConfigError(ValueError):
    """The instance's configuration cannot work."""


def _table(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table")
    return raw


def _string(raw: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key} must be a non-empty string")
    return value


def _path(raw: Mapping[str, Any], key: str, where: str) -> JsonPath | None:
    if raw.get(key) is None:
        return None
    try:
        return JsonPath(_string(raw, key, where))
    except ValueError as exc:
        raise ConfigError(f"{where}.{key}: {exc}") from None


@dataclass(frozen=True)
class RequestSpec:
    """One request: method, url template, header templates, JSON body template."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None

    @classmethod
    def parse(
        cls, raw: Any, where: str, default_method: str = "GET", with_body: bool = True
    ) -> RequestSpec:
        raw = _table(raw, where)
        method = _string(raw, "method", where, default_method).upper()
        if method not in METHODS:
            raise ConfigError(f"{where}.method {method!r} is not one of {', '.join(METHODS)}")
        headers = _table(raw.get("headers", {}), f"{where}.headers")
        if not all(isinstance(v, str) for v in headers.values()):
            raise ConfigError(f"{where}.headers: every value must be a string")
        body = raw.get("body") if with_body else None
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError as exc:
                raise ConfigError(f"{where}.body is not valid JSON: {exc}") from None
        return cls(method, _string(raw, "url", where), dict(headers), body)


@dataclass(frozen=True)
class StartSpec:
    request: RequestSpec
    accept: frozenset[int]
    job_id_path: JsonPath | None
    job_id_header: str | None
    idempotency_header: str | None
    attempts: int
    retry_pause: float

    @classmethod
    def parse(cls, raw: Any, where: str) -> StartSpec:
        request = RequestSpec.parse(raw, where, default_method="POST")
        accept = raw.get("accept", [200, 201, 202])
        if not isinstance(accept, list) or not all(
            isinstance(c, int) and 200 <= c < 400 for c in accept
        ):
            raise ConfigError(f"{where}.accept must be a list of 2xx/3xx status codes")
        path = _path(raw, "job_id", where)
        header = raw.get("job_id_header")
        if (path is None) == (header is None):
            raise ConfigError(
                f"{where} needs exactly one of job_id (a JSON path in the answer) and "
                'job_id_header (e.g. "Location")'
            )
        idempotency = raw.get("idempotency_header")
        if idempotency is not None and not isinstance(idempotency, str):
            raise ConfigError(f"{where}.idempotency_header must be a header name")
        attempts = int(raw.get("attempts", 4))
        if not 1 <= attempts <= 10:
            raise ConfigError(f"{where}.attempts must be between 1 and 10")
        return cls(
            request,
            frozenset(accept),
            path,
            str(header) if header is not None else None,
            idempotency or None,
            attempts,
            float(raw.get("retry_pause", 0.5)),
        )


@dataclass(frozen=True)
class StatusSpec:
    request: RequestSpec
    path: JsonPath
    statuses: Mapping[str, BackendStatus]
    message_path: JsonPath | None
    web_url: str | None

    @classmethod
    def parse(cls, raw: Any, where: str) -> StatusSpec:
        request = RequestSpec.parse(raw, where, with_body=False)
        path = _path(raw, "path", where)
        if path is None:
            raise ConfigError(f"{where}.path (the JSON path of the status value) is required")
        table = _table(raw.get("map"), f"{where}.map")
        statuses: dict[str, BackendStatus] = {}
        for value, word in table.items():
            if word not in STATUS_WORDS:
                raise ConfigError(
                    f"{where}.map.{value} = {word!r}: use one of {', '.join(STATUS_WORDS)}"
                )
            statuses[str(value)] = STATUS_WORDS[word]
        web_url = raw.get("web_url")
        return cls(request, path, statuses, _path(raw, "message_path", where), web_url)


@dataclass(frozen=True)
class OutputSpec:
    """``url`` with ``{offset}``: the answer is the text from that byte on (or the JSON answer
    holds it at ``path``). Otherwise ``path`` names the whole text in the answer of ``url``
    (default: the status request), and ASCOB cuts it at the offset."""

    request: RequestSpec
    path: JsonPath | None
    by_offset: bool

    @classmethod
    def parse(cls, raw: Any, where: str, status: StatusSpec) -> OutputSpec:
        raw = _table(raw, where)
        if raw.get("url") is None:
            request = status.request
        else:
            request = RequestSpec.parse(raw, where, with_body=False)
        request = RequestSpec(
            request.method,
            request.url,
            {**request.headers, **_table(raw.get("headers", {}), f"{where}.headers")},
        )
        by_offset = "offset" in variables_in(request.url)
        path = _path(raw, "path", where)
        if not by_offset and path is None:
            raise ConfigError(
                f"{where} needs a url with {{offset}}, or a path (JSON path of the whole text)"
            )
        return cls(request, path, by_offset)


@dataclass(frozen=True)
class Instance:
    name: str
    timeout: float
    secret_env: frozenset[str]
    headers: Mapping[str, str]
    start: StartSpec
    status: StatusSpec
    output: OutputSpec | None
    stop: RequestSpec | None
    force_stop: RequestSpec | None

    @classmethod
    def parse(cls, name: str, raw: Any) -> Instance:
        where = f"[http.{name}]"
        raw = _table(raw, where)
        secret_env = raw.get("secret_env", [])
        if not isinstance(secret_env, list) or not all(isinstance(s, str) for s in secret_env):
            raise ConfigError(f"{where}.secret_env must be a list of variable names")
        headers = _table(raw.get("headers", {}), f"{where}.headers")
        if "start" not in raw or "status" not in raw:
            raise ConfigError(f"{where} needs a [http.{name}.start] and a [http.{name}.status]")
        status = StatusSpec.parse(raw["status"], f"[http.{name}.status]")
        instance = cls(
            name=name,
            timeout=float(raw.get("timeout", 30.0)),
            secret_env=frozenset(secret_env),
            headers={str(k): str(v) for k, v in headers.items()},
            start=StartSpec.parse(raw["start"], f"[http.{name}.start]"),
            status=status,
            output=(
                OutputSpec.parse(raw["output"], f"[http.{name}.output]", status)
                if "output" in raw
                else None
            ),
            stop=RequestSpec.parse(raw["stop"], f"[http.{name}.stop]", "POST")
            if "stop" in raw
            else None,
            force_stop=RequestSpec.parse(raw["force_stop"], f"[http.{name}.force_stop]", "POST")
            if "force_stop" in raw
            else None,
        )
        instance.check_variables()
        return instance

    def check_variables(self) -> None:
        """Every template names only variables its place provides (see the module's table)."""
        secrets = {f"env.{n}" for n in self.secret_env}
        places: list[tuple[str, RequestSpec | None, frozenset[str], bool]] = [
            ("start", self.start.request, START_VARIABLES, True),
            ("status", self.status.request, FOLLOW_VARIABLES, False),
            ("output", self.output.request if self.output else None, OUTPUT_VARIABLES, False),
            ("stop", self.stop, FOLLOW_VARIABLES, False),
            ("force_stop", self.force_stop, FOLLOW_VARIABLES, False),
        ]
        for place, request, allowed, params in places:
            if request is None:
                continue
            where = f"[http.{self.name}.{place}]"

            def known(name: str, allowed: frozenset[str] = allowed, params: bool = params) -> bool:
                return name in allowed or (params and name.startswith("param."))

            for part, value in (("url", request.url), ("body", request.body)):
                bad = {v for v in variables_in(value) if not known(v)}
                if bad:
                    raise ConfigError(self._unknown(where, part, bad, allowed, params))
            header_values = [*self.headers.values(), *request.headers.values()]
            bad = {v for v in variables_in(header_values) if not known(v) and v not in secrets}
            if bad:
                raise ConfigError(self._unknown(where, "headers", bad, allowed | secrets, params))
        if self.status.web_url is not None:
            bad = variables_in(self.status.web_url) - FOLLOW_VARIABLES
            if bad:
                raise ConfigError(
                    self._unknown(f"[http.{self.name}.status]", "web_url", bad, FOLLOW_VARIABLES)
                )

    def _unknown(
        self,
        where: str,
        part: str,
        bad: set[str],
        allowed: frozenset[str] | set[str],
        params: bool = False,
    ) -> str:
        known = names(allowed) + (", {param.NAME}" if params else "")
        hint = ""
        if any(b.startswith("env.") for b in bad):
            hint = " ({env.NAME} only in header values, for names listed in secret_env)"
        return f"{where} {part} names unknown variable {names(bad)}; known here: {known}{hint}"
