"""Session-wide test settings: offline hubs, quiet transformers, one avdag home per session."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
for name in [n for n in os.environ if n.startswith(("AVDAG_", "OPENAI_"))]:
    os.environ.pop(name)  # the tests choose their own judge, model, trainer and landing zone

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def avdag_home(tmp_path_factory):
    """A fresh $AVDAG_HOME: the tiny model is built there once and shared by every test."""
    home = tmp_path_factory.mktemp("avdag_home")
    os.environ["AVDAG_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    (home / "dagster").mkdir()
    return home


@pytest.fixture(scope="session")
def tiny_model_path(avdag_home):
    """The embedded tiny Qwen2.5-VL model, built as the demo builds it."""
    from avdag.resources.captioner import CaptionerResource
    from avdag.resources.storage import StateStoreResource

    return CaptionerResource().base_model(StateStoreResource())


@pytest.fixture(scope="module")
def s3():
    """A loopback S3 server (moto) for one test module; see `avdag_tests.support.s3_server`."""
    from avdag_tests.support.s3_server import LoopbackS3

    with LoopbackS3() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url():
    """An empty database on a throwaway Postgres server, one per session; see `avdag_tests.support.postgres_server`.

    Without Debian's Postgres binaries this fails, never skips: `make test` installs them.
    """
    from avdag_tests.support.postgres_server import PostgresServer, PostgresUnavailable

    try:
        with PostgresServer() as server:
            yield server.url
    except PostgresUnavailable as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty database of each backend `AVDAG_DB_URL` accepts: a SQLite file, or a new schema on `postgres_url`."""
    from avdag.core.common.database import Database, sqlite_url
    from avdag_tests.support.postgres_server import isolated_schema

    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "avdag.sqlite")
        return
    url = isolated_schema(request.getfixturevalue("postgres_url"))
    yield url
    Database(url).engine.dispose()  # the server allows 200 connections: give this test's back
