"""The SQL engine: SQLite in ASCOB_HOME by default, PostgreSQL when ASCOB_DATABASE_URL says so."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import event, inspect, make_url
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel, create_engine

import ascob_api.models  # noqa: F401 - registers the tables
import ascob_flows.locks.sql  # noqa: F401 - registers the lock tables


def _normalise(url: str) -> str:
    # plain postgresql:// means psycopg 3, the driver we install
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.removeprefix("postgres://")
    return url


READ_ONLY = "ascob_read_only"


def read_only(engine: Engine) -> Engine:
    """The same engine (and pool) for transactions that only read."""
    return engine.execution_options(**{READ_ONLY: True})


def _create_private(url: str) -> None:
    """Create a SQLite database file readable by its owner only (it holds token hashes, run
    specs and input files), like the root token file. SQLite gives its -wal and -shm files the
    database file's permissions."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:") or os.path.exists(path):
        return
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def make_engine(url: str) -> Engine:
    url = _normalise(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        _create_private(url)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        kwargs["pool_size"] = 20
        kwargs["max_overflow"] = 20
    else:
        # a database server may drop idle connections: test each one before use
        kwargs["pool_pre_ping"] = True
        kwargs["pool_size"] = 10
        kwargs["max_overflow"] = 20
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # autocommit off in the driver; SQLAlchemy emits BEGIN itself (see below)
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # a transaction that may write takes the write lock up front: no deadlock between
            # two upgrading readers. Reads (see read_only) take none: in WAL mode they neither
            # wait for writers nor make them wait
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


# any constant: the key of the PostgreSQL advisory lock that serialises schema creation
_SCHEMA_LOCK = 0x_A5C0_B5C4


def create_schema(engine: Engine) -> None:
    """Create missing tables, and add the columns a newer ASCOB added to existing ones. On
    PostgreSQL, processes that start together take turns: two concurrent ``CREATE TABLE`` of the
    same table fail with a unique violation on ``pg_type`` (``create_all``'s "does it exist?"
    check and the create are not atomic)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
        SQLModel.metadata.create_all(conn)
        _add_missing_columns(conn)


def _add_missing_columns(conn: Connection) -> None:
    """Upgrades are additive: a column added in a later version is added to an existing table,
    nullable or with its scalar default (existing rows get it)."""
    found = inspect(conn)
    for table in SQLModel.metadata.sorted_tables:
        have = {c["name"] for c in found.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} "
            ddl += column.type.compile(dialect=conn.dialect)
            default = getattr(column.default, "arg", None)
            if isinstance(default, bool):
                ddl += f" DEFAULT {'true' if default else 'false'}"
            elif isinstance(default, int | float):
                ddl += f" DEFAULT {default}"
            if not column.nullable and default is not None:
                ddl += " NOT NULL"
            conn.exec_driver_sql(ddl)
