"""The database behind `AVDAG_DB_URL`, on SQLite and a real Postgres: transactions, first writer wins, schema, fork."""

import multiprocessing
import threading
import time

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text, func, inspect, select, update

from avdag.core.common.database import Database, sqlite_url

_METADATA = MetaData()
_ITEMS = Table(
    "avdag_test_items",
    _METADATA,
    Column("key", Text, primary_key=True),
    Column("value", Integer, nullable=False),
    Column("owner", Text, nullable=False, index=True),
)


def _count(db: Database) -> int:
    with db.read() as connection:
        return connection.execute(select(func.count()).select_from(_ITEMS)).scalar_one()


def test_urls_name_the_backend_and_postgres_goes_through_psycopg(tmp_path):
    assert Database(sqlite_url(tmp_path / "a.sqlite")).dialect == "sqlite"
    for scheme in ("postgresql", "postgres"):
        db = Database(f"{scheme}://avdag:secret@db.example:5432/avdag")
        assert db.dialect == "postgresql" and db.engine.dialect.driver == "psycopg"
        assert "secret" not in db.redacted_url and "secret" not in repr(db)
    with pytest.raises(ValueError, match="mysql://"):
        Database("mysql://db/avdag")


def test_sqlite_file_is_created_with_its_folder_in_wal_mode(tmp_path):
    db = Database(sqlite_url(tmp_path / "deep" / "state" / "avdag.sqlite"))
    db.ensure_schema(_METADATA)
    assert (tmp_path / "deep" / "state" / "avdag.sqlite").is_file()
    with db.read() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_schema_is_created_once_with_its_indexes_and_again_is_harmless(db_url):
    db = Database(db_url)
    db.ensure_schema(_METADATA)
    db.ensure_schema(_METADATA)
    inspector = inspect(db.engine)
    assert "avdag_test_items" in inspector.get_table_names()
    assert [index["column_names"] for index in inspector.get_indexes("avdag_test_items")] == [["owner"]]


def test_a_write_commits_at_the_end_and_rolls_back_on_an_error(db_url):
    db = Database(db_url)
    db.ensure_schema(_METADATA)
    with db.write() as connection:
        connection.execute(_ITEMS.insert().values(key="kept", value=1, owner="t"))
    with pytest.raises(RuntimeError, match="half-way"):
        with db.write() as connection:
            connection.execute(_ITEMS.insert().values(key="lost", value=2, owner="t"))
            raise RuntimeError("failed half-way")
    with db.read() as connection:
        assert connection.execute(select(_ITEMS.c.key)).scalars().all() == ["kept"]


def test_insert_new_lets_the_first_writer_win_and_says_whether_the_row_was_new(db_url):
    db = Database(db_url)
    db.ensure_schema(_METADATA)
    with db.write() as connection:
        first = connection.execute(db.insert_new(_ITEMS).values(key="k", value=1, owner="first")).rowcount
        second = connection.execute(db.insert_new(_ITEMS).values(key="k", value=2, owner="second")).rowcount
        connection.execute(db.insert_new(_ITEMS), [dict(key=key, value=3, owner="many") for key in ("k", "k2", "k3")])
    assert (first, second) == (1, 0)
    with db.read() as connection:
        rows = dict(connection.execute(select(_ITEMS.c.key, _ITEMS.c.owner)).all())
    assert rows == {"k": "first", "k2": "many", "k3": "many"}


def test_sqlite_writers_serialize_so_read_then_write_loses_no_update(tmp_path):
    """BEGIN IMMEDIATE: a writer's read-modify-write is never overtaken by another writer's."""
    db = Database(sqlite_url(tmp_path / "counter.sqlite"))
    db.ensure_schema(_METADATA)
    with db.write() as connection:
        connection.execute(_ITEMS.insert().values(key="counter", value=0, owner="t"))

    def bump() -> None:
        for _ in range(25):
            with db.write() as connection:
                value = connection.execute(select(_ITEMS.c.value).where(_ITEMS.c.key == "counter")).scalar_one()
                time.sleep(0.0005)  # widen the window another writer would slip through
                connection.execute(update(_ITEMS).where(_ITEMS.c.key == "counter").values(value=value + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with db.read() as connection:
        assert connection.execute(select(_ITEMS.c.value)).scalar_one() == 100


def _session(connection) -> int:
    """The Postgres backend serving this connection (one per connection); 0 on SQLite."""
    return connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() if connection.dialect.name != "sqlite" else 0


def _use_in_forked_child(url: str) -> None:
    db = Database(url)
    with db.write() as connection:
        connection.execute(_ITEMS.insert().values(key="child", value=_session(connection), owner="child"))


def test_a_forked_child_opens_its_own_connections_and_leaves_the_parents_working(db_url):
    db = Database(db_url)
    db.ensure_schema(_METADATA)
    with db.write() as connection:
        parent_session = _session(connection)
        connection.execute(_ITEMS.insert().values(key="parent", value=parent_session, owner="parent"))
    child = multiprocessing.get_context("fork").Process(target=_use_in_forked_child, args=(db_url,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    with db.write() as connection:  # the pooled connection the parent opened before the fork still works
        assert _session(connection) == parent_session
        connection.execute(_ITEMS.insert().values(key="parent-after", value=parent_session, owner="parent"))
        child_session = connection.execute(select(_ITEMS.c.value).where(_ITEMS.c.key == "child")).scalar_one()
    assert _count(db) == 3
    if db.dialect == "postgresql":
        assert child_session != parent_session, "the child must not talk over the parent's connection"
