"""Structured logs (structlog over the standard library): console or JSON lines.

Lines about a run carry its id as ``runId`` (and say ``run N`` in the message). The console
format is one line per event for a person: no ``message=`` repeating the text, none of the
Prefect engine's fields (``flow_run_id``...); the JSON format keeps every field.

An error's traceback is plain text without local variables (a rich traceback with locals would
print the caller's token and the whole Settings, and rendering it blocked the API for seconds),
and every configured secret (:func:`redact`) is replaced by ``***`` wherever it would appear in a
line, its traceback included.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

import structlog

_secrets: list[str] = []
_pattern: re.Pattern[str] | None = None

MASK = "***"


def redact(values: Iterable[str | None]) -> None:
    """Never log these strings (tokens, passwords). Short values are ignored (too common)."""
    global _pattern
    found = {v for v in values if v and len(v) >= 6}
    _secrets[:] = sorted(found, key=len, reverse=True)
    _pattern = re.compile("|".join(re.escape(v) for v in _secrets)) if _secrets else None


def scrub(text: str) -> str:
    """``text`` with every configured secret masked."""
    return _pattern.sub(MASK, text) if _pattern is not None else text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub_value(v) for v in value)
    return value


def _redact_processor(
    _: object, __: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    if _pattern is None:
        return event
    return {
        k: _scrub_value(v) if isinstance(v, str | dict | list | tuple) else v
        for k, v in event.items()
    }


# what the Prefect engine's run loggers add to every record: kept in JSON lines, not shown to a
# person (the message already says which run)
_ENGINE_FIELDS = frozenset(
    {
        "flow_name",
        "flow_run_id",
        "flow_run_name",
        "task_name",
        "task_run_id",
        "task_run_name",
        "worker_id",
        "deployment_name",
        "send_to_api",
    }
)


def _for_a_person(
    _: object, __: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """The console's line: what happened and the run id, without the engine's fields, and
    without ``message`` (the record's text again, set when another handler formatted it)."""
    return {
        k: v
        for k, v in event.items()
        if k not in _ENGINE_FIELDS and not (k == "message" and v == event.get("event"))
    }


def configure_logging(fmt: str = "console", level: str = "INFO") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # plain text, no local variables; formatted here so that it is redacted too
            structlog.processors.format_exc_info,
            _redact_processor,
            *([] if fmt == "json" else [_for_a_person]),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
