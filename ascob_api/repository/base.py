"""What every aggregate of the repository shares: the engine, and short sessions over it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Engine
from sqlmodel import Session

from ascob_api.db import read_only
from ascob_flows.status import FINAL_STATUSES

FINAL = [s.value for s in FINAL_STATUSES]


class RecordNotFound(LookupError):
    """No such row (a run's file, an API token); ``ascob_api.errors`` maps it to 404. An unknown
    run is :class:`ascob_flows.errors.RunNotFound`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Store:
    """One short session per call, over one engine: thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reader = read_only(engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session that only reads: on SQLite it does not take the write lock."""
        with Session(self._reader, expire_on_commit=False) as session:
            yield session
