"""A thin async client for Airflow's REST API, over ``httpx.AsyncClient``.

Two generations of the API, chosen per instance:

- ``v1``: the Airflow 2 stable REST API under ``/api/v1`` (basic auth or a bearer token);
- ``v2``: the Airflow 3 public API under ``/api/v2``; a username and password are exchanged at
  ``POST /auth/token`` for a JWT ``access_token``, renewed shortly before its ``exp`` claim and
  whenever the server answers 401 (``Token Expired``) or 403 ``Invalid JWT token`` (the server's
  key changed); a ready bearer token may be given instead.

It speaks only HTTP; what the answers mean for ASCOB is decided in :mod:`backends.airflow`.
Every call raises the kit's ``SystemHTTPError`` (an answer with an error status),
``SystemProtocolError`` (an answer that is not what the API documents), or an
``httpx.HTTPError`` (no answer); ``AirflowHTTPError`` and ``AirflowProtocolError`` are their
names here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any
from urllib.parse import quote

import httpx

from backends.kit import ApiClient, SystemHTTPError, SystemProtocolError

__all__ = ["API_VERSIONS", "AirflowClient", "AirflowHTTPError", "AirflowProtocolError"]

API_VERSIONS = ("v1", "v2")
_RENEW_MARGIN = 30.0  # seconds before a JWT's exp at which it is renewed
_PAGE = 100  # task instances per page
_MAX_LOG_PAGES = 200  # continuation tokens followed for one log read


AirflowHTTPError = SystemHTTPError
AirflowProtocolError = SystemProtocolError


def error_message(response: httpx.Response) -> str:
    """Airflow's own words from an error answer.

    v1 answers RFC 7807 problems (``title``, ``detail``); v2 answers FastAPI's ``detail``, which is
    a string, a list of validation errors, or an object with ``reason``/``message``; Airflow 3
    answers a request to ``/api/v1`` with an ``error``.
    """
    try:
        data = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300] or response.reason_phrase
    if not isinstance(data, dict):
        return str(data)[:300]
    parts: list[str] = []
    title, detail = data.get("title"), data.get("detail")
    if isinstance(data.get("error"), str):  # Airflow 3 on a path it no longer serves (/api/v1)
        parts.append(data["error"])
    if title:
        parts.append(str(title))
    if isinstance(detail, str) and detail:
        parts.append(detail)
    elif isinstance(detail, list):
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc") or [])
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    elif isinstance(detail, dict):
        parts.extend(str(detail[k]) for k in ("reason", "message") if detail.get(k))
    return ": ".join(parts)[:500] or response.reason_phrase


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (read, not verified: the server verifies), if it has one."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def _p(segment: str) -> str:
    return quote(segment, safe="")


class AirflowClient(ApiClient):
    """One Airflow instance through one API generation."""

    system = "airflow"

    def __init__(
        self,
        url: str,
        api: str = "v2",
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if api not in API_VERSIONS:
            raise ValueError(f"api must be one of {', '.join(API_VERSIONS)}, not {api!r}")
        self.api = api
        self.root = url.rstrip("/")
        basic = httpx.BasicAuth(username, password or "") if api == "v1" and username else None
        super().__init__(
            f"{self.root}/api/{api}/",
            auth=None if token else basic,
            timeout=timeout,
            transport=transport,
        )
        self._static = token
        self._login = (username, password or "") if api == "v2" and username and not token else None
        self._jwt: str | None = None
        self._jwt_expiry: float | None = None
        self._jwt_lock = asyncio.Lock()
        self.logins = 0

    # ------------------------------------------------------------------ auth

    async def _bearer(self, renew: bool) -> dict[str, str]:
        if self._static:
            return {"Authorization": f"Bearer {self._static}"}
        if self._login is None:
            return {}
        async with self._jwt_lock:
            stale = self._jwt_expiry is not None and time.time() > self._jwt_expiry
            if renew or stale or self._jwt is None:
                await self._exchange_token()
        return {"Authorization": f"Bearer {self._jwt}"}

    async def _exchange_token(self) -> None:
        assert self._login is not None
        username, password = self._login
        response = await self._http.post(
            f"{self.root}/auth/token", json={"username": username, "password": password}
        )
        if response.status_code >= 400:
            raise SystemHTTPError(
                self.system,
                response.status_code,
                f"POST /auth/token refused: {error_message(response)}",
            )
        try:
            token = response.json()["access_token"]
        except (ValueError, KeyError, TypeError) as exc:
            raise self.protocol_error("POST /auth/token: no access_token in the answer") from exc
        if not isinstance(token, str) or not token:
            raise self.protocol_error("POST /auth/token: access_token is not a string")
        now, expiry = time.time(), jwt_expiry(token)
        if expiry is not None:  # renew a little early: 30 s, or a tenth of a short lifetime
            expiry -= min(_RENEW_MARGIN, max(0.0, expiry - now) / 10)
        self._jwt, self._jwt_expiry = token, expiry
        self.logins += 1

    @staticmethod
    def _token_refused(response: httpx.Response) -> bool:
        if response.status_code == 401:
            return True
        return response.status_code == 403 and "token" in error_message(response).lower()

    # ------------------------------------------------------------------ plumbing

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        accept: str | None = None,
    ) -> httpx.Response:
        """One call; with a JWT, a refused token is renewed and the call made once more (a 401
        or 403 means Airflow did not act on it)."""
        headers = {"Accept": accept} if accept else {}
        response = await self._http.request(
            method,
            path,
            json=json_body,
            params=params,
            headers={**headers, **await self._bearer(False)},
        )
        if self._login is not None and self._token_refused(response):
            response = await self._http.request(
                method,
                path,
                json=json_body,
                params=params,
                headers={**headers, **await self._bearer(True)},
            )
        if response.status_code >= 400:
            raise self.error(response)
        return response

    def error_message(self, response: httpx.Response) -> str:
        return error_message(response)

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self.request(method, path, **kwargs)
        data = self.decode(response, f"{method} {path}")
        if not isinstance(data, dict):
            raise self.protocol_error(f"{method} {path}: expected a JSON object")
        return data

    # ------------------------------------------------------------------ API

    async def get_dag(self, dag_id: str) -> dict[str, Any]:
        return await self._json("GET", f"dags/{_p(dag_id)}")

    async def trigger(self, dag_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a new dag run (``body`` carries ``dag_run_id`` and ``conf``)."""
        return await self._json("POST", f"dags/{_p(dag_id)}/dagRuns", json_body=body)

    async def get_dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return await self._json("GET", f"dags/{_p(dag_id)}/dagRuns/{_p(run_id)}")

    async def patch_dag_run(self, dag_id: str, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json("PATCH", f"dags/{_p(dag_id)}/dagRuns/{_p(run_id)}", json_body=body)

    async def set_note(self, dag_id: str, run_id: str, note: str) -> None:
        """Set the dag run's note: ``PATCH …/setNote`` on v1 (Airflow 2.5+), ``note`` on v2."""
        path = f"dags/{_p(dag_id)}/dagRuns/{_p(run_id)}"
        if self.api == "v1":
            await self._json("PATCH", f"{path}/setNote", json_body={"note": note})
        else:
            await self._json("PATCH", path, json_body={"note": note})

    async def count_dag_runs(self, dag_id: str, state: str) -> int | None:
        """How many runs of the DAG are in ``state`` (None: Airflow does not say)."""
        data = await self._json(
            "GET", f"dags/{_p(dag_id)}/dagRuns", params={"state": state, "limit": 1}
        )
        total = data.get("total_entries")
        return total if isinstance(total, int) else None

    async def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the dag run (all pages)."""
        found: list[dict[str, Any]] = []
        path = f"dags/{_p(dag_id)}/dagRuns/{_p(run_id)}/taskInstances"
        while True:
            data = await self._json("GET", path, params={"limit": _PAGE, "offset": len(found)})
            page = data.get("task_instances")
            if not isinstance(page, list):
                raise self.protocol_error(f"GET {path}: no task_instances list")
            found.extend(ti for ti in page if isinstance(ti, dict))
            total = data.get("total_entries")
            if not page or not isinstance(total, int) or len(found) >= total:
                return found

    async def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> list[str]:
        """The lines of one try's log, without Airflow's own notes on where it read them."""
        if self.api == "v1":  # text/plain: the whole log so far, no tuples-as-text
            response = await self.request(
                "GET",
                self._log_path(dag_id, run_id, task_id, try_number),
                params={"full_content": "true", "map_index": map_index},
                accept="text/plain",
            )
            return [
                line
                for line in response.text.splitlines()
                if not line.startswith("*** ") and line != "***"
            ]
        from backends.airflow.logs import render_entries  # here: logs imports this module

        entries = await self.task_log_entries(dag_id, run_id, task_id, try_number, map_index)
        return render_entries(entries)[0]

    def _log_path(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        return (
            f"dags/{_p(dag_id)}/dagRuns/{_p(run_id)}/taskInstances/{_p(task_id)}/logs/{try_number}"
        )

    async def task_log_entries(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> list[Any]:
        """Airflow 3: the entries of one try's log (``StructuredLogMessage`` objects), all pages."""
        path = self._log_path(dag_id, run_id, task_id, try_number)
        params: dict[str, Any] = {"full_content": "true", "map_index": map_index}
        entries: list[Any] = []
        for _ in range(_MAX_LOG_PAGES):
            data = await self._json("GET", path, params=params)
            content = data.get("content")
            if not isinstance(content, list):
                raise self.protocol_error(f"GET {path}: content is not a list")
            entries.extend(content)
            token = data.get("continuation_token")
            if not token or not content:  # the end, or nothing more yet (the task runs on)
                break
            params = {**params, "token": token}
        return entries
