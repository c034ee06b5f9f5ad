"""Counts the Prefect API calls of a process, for ``bench.prefect_cost`` (not for production).

``bench.prefect_cost`` puts this folder first on ``PYTHONPATH`` of the processes it measures and
names a file in ``ASCOB_BENCH_CALLS``; every HTTP request sent through ``httpx`` is counted by
method and route (ids replaced by ``{id}``), an answer 5xx once more as ``503 METHOD route``,
and the counts are written to that file as JSON twice a second and at exit. The Prefect server
itself (``prefect server start``) is left alone.
"""

from __future__ import annotations

import os
import sys

_path = os.environ.get("ASCOB_BENCH_CALLS")
_server = sys.argv[1:3] == ["server", "start"]

if _path and not _server:
    import atexit
    import json
    import re
    import threading
    import time
    from collections import Counter

    import httpx

    _ids = re.compile(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|/\d+(?=/|$)")
    _counts: Counter[str] = Counter()
    _lock = threading.Lock()
    _out = f"{_path}.{os.getpid()}.json"

    def _count(request: httpx.Request, status: int | None = None) -> None:
        route = _ids.sub("/{id}", request.url.path)
        with _lock:
            if status is None:
                _counts[f"{request.method} {route}"] += 1
            else:  # a refusal (503: the server's database was busy), counted apart
                _counts[f"{status} {request.method} {route}"] += 1

    def _dump() -> None:
        with _lock:
            data = dict(_counts)
        tmp = _out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, _out)

    def _dumper() -> None:
        while True:
            time.sleep(0.5)
            _dump()

    _async_send = httpx.AsyncClient.send
    _sync_send = httpx.Client.send

    async def _counted_async_send(self, request, **kwargs):  # type: ignore[no-untyped-def]
        _count(request)
        response = await _async_send(self, request, **kwargs)
        if response.status_code >= 500:
            _count(request, response.status_code)
        return response

    def _counted_sync_send(self, request, **kwargs):  # type: ignore[no-untyped-def]
        _count(request)
        response = _sync_send(self, request, **kwargs)
        if response.status_code >= 500:
            _count(request, response.status_code)
        return response

    httpx.AsyncClient.send = _counted_async_send  # type: ignore[method-assign]
    httpx.Client.send = _counted_sync_send  # type: ignore[method-assign]
    threading.Thread(target=_dumper, name="bench-callcount", daemon=True).start()
    atexit.register(_dump)
