"""Templates and JSON paths for ``httpBackend``: small, safe, no code execution.

A template is a string in which ``{NAME}`` is replaced by a value. ``NAME`` is one of
``run_id``, ``webhook_id``, ``job_id``, ``offset``, ``param.<parameter>`` or ``env.<VARIABLE>``;
which of them a given template may use is decided by the caller (see :mod:`.config`). The
substitution is one regular expression, never ``str.format``: no attribute access, no indexing,
no conversion. Text that is not ``{`` + a name + ``}`` (JSON braces, ``{}``, ``{ x }``) is left
as it is.

How a value is inserted depends on where the template is:

- URLs: the value is percent-encoded (``/``, ``?``, ``&``, ``#``, spaces... all encoded), so a
  value never changes the URL's structure;
- headers: inserted as is, but a value holding a line break is refused;
- JSON bodies: the body is a JSON value; templates are applied to its strings (keys and values),
  so a value always ends up inside a JSON string, escaped by the JSON encoder.

A JSON path is a dotted, indexed path into a JSON answer: ``data.job.id``, ``items[0].id``,
``[2]``, ``result.logs[0]``. Names are object keys (any characters but ``.``, ``[`` and ``]``),
``[n]`` is the n-th element of an array (from 0).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

__all__ = [
    "JsonPath",
    "TemplateError",
    "header_value",
    "names",
    "render",
    "render_body",
    "scalar_text",
    "to_json",
    "url_value",
    "variables_in",
]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_.\-]+)?"
VARIABLE = re.compile(r"\{(" + _NAME + r")\}")


class TemplateError(ValueError):
    """A template names a variable that has no value here."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def variables_in(value: Any) -> set[str]:
    """Every variable named in a template, or in the strings of a JSON value."""
    if isinstance(value, str):
        return set(VARIABLE.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(variables_in(k) | variables_in(v) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return set().union(*(variables_in(v) for v in value))
    return set()


def render(template: str, values: Mapping[str, str], encode: Callable[[str], str]) -> str:
    """``template`` with each ``{NAME}`` replaced by ``encode(values[NAME])``."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise TemplateError(name, f"no value for {{{name}}}")
        return encode(values[name])

    return VARIABLE.sub(one, template)


def url_value(value: str) -> str:
    return quote(value, safe="")


def header_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("a header value may not contain a line break")
    return value


def render_body(body: Any, values: Mapping[str, str]) -> Any:
    """A copy of the JSON value ``body`` with the templates in its strings rendered."""
    if isinstance(body, str):
        return render(body, values, str)
    if isinstance(body, Mapping):
        return {render(k, values, str): render_body(v, values) for k, v in body.items()}
    if isinstance(body, list | tuple):
        return [render_body(v, values) for v in body]
    return body


def to_json(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


class JsonPath:
    """A parsed JSON path; :meth:`find` follows it through a decoded JSON answer."""

    def __init__(self, text: str) -> None:
        steps: list[str | int] = []
        position = 0
        while position < len(text):
            match = _STEP.match(text, position)
            if match is None or (match.group(0).startswith(".") and position == 0):
                raise ValueError(
                    f"invalid JSON path {text!r} at position {position} "
                    "(use names and [index], e.g. data.items[0].id)"
                )
            steps.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
            position = match.end()
        if not steps:
            raise ValueError("empty JSON path")
        self.text = text
        self.steps = tuple(steps)

    def __repr__(self) -> str:
        return f"JsonPath({self.text!r})"

    def find(self, data: Any) -> Any:
        """The value at the path; :class:`LookupError` if the answer has none there."""
        here = data
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(here, list) or step >= len(here):
                    raise LookupError(f"no element [{step}] on the way to {self.text}")
            elif not isinstance(here, dict) or step not in here:
                raise LookupError(f"no field {step!r} on the way to {self.text}")
            here = here[step]
        return here


def scalar_text(value: Any) -> str | None:
    """A JSON scalar as text (strings as they are, numbers and booleans as JSON writes them);
    None for null, objects and arrays."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return None


def names(values: Iterable[str]) -> str:
    return ", ".join("{" + v + "}" for v in sorted(values)) or "none"
