"""One database for the state that runs on different nodes must agree on: SQLite on one machine, Postgres across many.

The clip registry, the judge verdict cache and the judge-batch ledger live in the database
`AVDAG_DB_URL` names (default: a SQLite file under `$AVDAG_HOME`), so two runs racing for the same
clip, verdict or batch purchase settle it in one place, with transactions and unique keys. A
SQLite file serves one machine only: its locks and WAL do not work over a network filesystem, so a
deployment on several nodes points them all at one Postgres.

SQLite writers take the write lock when their transaction begins (`BEGIN IMMEDIATE`): concurrent
writers queue (busy timeout) instead of failing half-way, and readers never block them (WAL).
Postgres runs at READ COMMITTED; each store settles its races with `INSERT ... ON CONFLICT DO
NOTHING` and a re-read, or a row lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, MetaData, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateIndex, CreateTable, Table
from sqlalchemy.sql.dml import Insert

SQLITE_BUSY_TIMEOUT_S = 60
# Postgres advisory lock held while creating tables: concurrent CREATE TABLE IF NOT EXISTS can still collide.
_SCHEMA_LOCK_KEY = 0x61766461_67000001
_WRITE_OPTION = "avdag_write"

# Keyed by process id: a forked child makes its own engines and never touches (or closes) the parent's connections.
_engines: dict[tuple[int, str], Engine] = {}
_schemas_ready: set[tuple[int, str, tuple[str, ...]]] = set()
_lock = threading.Lock()


def sqlite_url(path: str | Path) -> str:
    """The URL of a SQLite file: `sqlite:////abs/path/avdag.sqlite`."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


class Database:
    """A database named by URL (`sqlite:///...` or `postgresql://...`): cheap to make, its engine shared per process."""

    def __init__(self, url: str) -> None:
        scheme = url.split("://", 1)[0]
        if scheme == "sqlite":
            self.dialect = "sqlite"
        elif scheme in ("postgresql", "postgres", "postgresql+psycopg"):
            self.dialect = "postgresql"
        else:
            raise ValueError(f"database URL {url!r}: expected sqlite:///path/to/file.sqlite or postgresql://...")
        self.url = url

    def __repr__(self) -> str:
        return f"Database({self.redacted_url!r})"

    @property
    def redacted_url(self) -> str:
        """The URL with any password masked, for logs and messages."""
        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def engine(self) -> Engine:
        key = (os.getpid(), self.url)
        with _lock:
            if key not in _engines:
                _engines[key] = _sqlite_engine(self.url) if self.dialect == "sqlite" else _postgres_engine(self.url)
            return _engines[key]

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One transaction that only reads."""
        with self.engine.begin() as connection:
            yield connection

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction that writes: committed at the end of the block, rolled back on an exception.

        On SQLite it holds the database's write lock from its first statement, so a read-then-write
        decision inside it cannot be overtaken by another writer.
        """
        with self.engine.connect() as connection:
            # preserve_rowcount: SQLAlchemy keeps an INSERT's rowcount (how many rows were new) only when asked.
            connection.execution_options(preserve_rowcount=True, **{_WRITE_OPTION: True})
            with connection.begin():
                yield connection

    def serialize(self, connection: Connection, lock_key: int) -> None:
        """Make this write transaction the only one past this point until it ends (`lock_key`: which queue).

        For a read-then-insert that must see every earlier insert (a twin search, a feed read by
        sequence number). SQLite's write transaction already holds the database's one write lock;
        Postgres takes a transaction-level advisory lock, released at commit or rollback.
        """
        if self.dialect == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})

    def insert_new(self, table: Table) -> Insert:
        """An INSERT that skips rows whose unique key is taken (`ON CONFLICT DO NOTHING`): the first writer wins.

        Its result's `rowcount` says how many rows were new; on Postgres a racing insert of the same
        key waits for the other transaction and then counts 0.
        """
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing()

    def ensure_schema(self, metadata: MetaData) -> None:
        """Create these tables and their indexes where missing (once per process); concurrent creators queue."""
        key = (os.getpid(), self.url, tuple(sorted(metadata.tables)))
        if key in _schemas_ready:
            return
        with self.write() as connection:
            self.serialize(connection, _SCHEMA_LOCK_KEY)
            for table in metadata.sorted_tables:
                connection.execute(CreateTable(table, if_not_exists=True))
                for index in sorted(table.indexes, key=lambda index: index.name or ""):
                    connection.execute(CreateIndex(index, if_not_exists=True))
        _schemas_ready.add(key)


def _sqlite_engine(url: str) -> Engine:
    path = make_url(url).database
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _connected(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own: `_begin` does
        _enable_wal(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_WRITE_OPTION)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _enable_wal(dbapi_connection) -> None:
    """WAL once per file (it persists). Switching needs the file to itself and SQLite answers "locked" at
    once rather than waiting while another process opens it too, so the switch is retried up to the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _postgres_engine(url: str) -> Engine:
    """psycopg 3 (`postgresql+psycopg`) whatever driver the URL names; connections are checked before use."""
    return create_engine(f"postgresql+psycopg://{url.split('://', 1)[1]}", pool_pre_ping=True)
