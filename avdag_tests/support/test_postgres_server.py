"""The throwaway Postgres of the database tests: found where Debian installs it, or a failure saying how to get it."""

import pytest

from avdag_tests.support import postgres_server
from avdag_tests.support.postgres_server import PostgresUnavailable, postgres_bin_dir


def test_without_the_binaries_it_fails_and_says_make_test_installs_them(monkeypatch):
    monkeypatch.setattr(postgres_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres_server.glob, "glob", lambda pattern: [])
    with pytest.raises(PostgresUnavailable, match="`make test` installs Debian's postgresql package"):
        postgres_bin_dir()


def test_debians_versioned_folder_is_found_off_path(monkeypatch):
    monkeypatch.setattr(postgres_server.shutil, "which", lambda name: None)
    found = ["/usr/lib/postgresql/9/bin/initdb", "/usr/lib/postgresql/15/bin/initdb"]
    monkeypatch.setattr(postgres_server.glob, "glob", lambda pattern: found)
    assert str(postgres_bin_dir()) == "/usr/lib/postgresql/15/bin", "the newest version, by number"


def test_the_server_is_stopped_and_its_folder_deleted_on_exit():
    with postgres_server.PostgresServer() as server:
        with postgres_server.psycopg.connect(server.url) as db:
            assert db.execute("SELECT current_database()").fetchone() == ("avdag",)
        folder, url = server.folder, server.url
    assert not folder.exists()
    with pytest.raises(postgres_server.psycopg.OperationalError):
        postgres_server.psycopg.connect(url, connect_timeout=5)
