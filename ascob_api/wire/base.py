"""The wire models' base classes and the checks every input gets."""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    model_validator,
)

MAX_LOCK_WAIT_SECONDS = 30 * 24 * 3600


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _read_wire_names(cls, data: Any) -> Any:
        """Read what the server writes (``parentId``...) as well as the field names: the client
        parses the server's answers with these same models."""
        if not isinstance(data, dict):
            return data
        renames = {
            f.serialization_alias: name
            for name, f in cls.model_fields.items()
            if f.serialization_alias and f.serialization_alias != name and f.alias is None
        }
        if renames and any(key in renames for key in data):
            return {renames.get(key, key): value for key, value in data.items()}
        return data


def _check_text(value: Any, where: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: text is not valid Unicode (a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _check_text(item, where)


class InputModel(WireModel):
    """A request body: an unknown field is refused with the list of accepted ones (a misspelt
    filter must not silently widen a search), and text must be valid Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        accepted = {f.alias or name for name, f in cls.model_fields.items()}
        names = accepted | set(cls.model_fields)
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise ValueError(
                f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"accepted fields: {', '.join(sorted(accepted))}"
            )
        for key, value in data.items():
            _check_text(value, str(key))
        return data
