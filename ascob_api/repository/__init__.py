"""The repository over SQLModel, one module per aggregate; :class:`Repository` is all of them.

::

    Repository ── runs.py       Runs: recording and finding runs, the executors' queries
               ├─ door.py       Door: every write of a run (steps of the machine, named writes)
               ├─ files.py      Files: a run's input files
               ├─ tokens.py     Tokens: API tokens (the secret's SHA-256)
               ├─ audit.py      Audit: who did what
               ├─ callbacks.py  Callbacks: the outbox of callback deliveries
               ├─ executors.py  Executors: their heartbeats
               └─ installation.py  Installations: the installation's identity
    AsyncRepository (aio.py): the one async facade, each call in a worker thread

It implements :class:`ascob_flows.ports.RunRepository` for the engine, and the queries the REST
API needs. Every state change is one conditional UPDATE, so several API replicas and executors
can share the database. An unknown run raises :class:`ascob_flows.errors.RunNotFound`, another
unknown row :class:`RecordNotFound`; ``ascob_api.errors`` maps both to 404.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from ascob_api.repository.aio import AsyncRepository
from ascob_api.repository.audit import Audit
from ascob_api.repository.base import RecordNotFound, hash_secret
from ascob_api.repository.callbacks import Callbacks
from ascob_api.repository.door import Door
from ascob_api.repository.executors import Executors
from ascob_api.repository.files import Files
from ascob_api.repository.installation import Installations
from ascob_api.repository.runs import DuplicateKey, Runs, to_record
from ascob_api.repository.tokens import Tokens

__all__ = [
    "AsyncRepository",
    "DuplicateKey",
    "RecordNotFound",
    "Repository",
    "hash_secret",
    "to_record",
]


class Repository(Runs, Door, Files, Tokens, Audit, Callbacks, Executors, Installations):
    """All SQL access of ASCOB. Thread-safe: one short session per call."""

    def __init__(self, engine: Engine, callback_retry_seconds: float = 24 * 3600) -> None:
        Door.__init__(self, engine, callback_retry_seconds)
