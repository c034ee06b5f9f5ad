"""Times are aware UTC datetimes inside ASCOB; the REST API shows them as the original did."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def wire_time(value: datetime | None) -> str | None:
    """``2023-04-16T18:41:19.099475``: UTC, no offset, as the original ASCOB answered."""
    if value is None:
        return None
    if value.utcoffset() is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat()
