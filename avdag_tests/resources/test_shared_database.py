"""`AVDAG_DB_URL` reaches the registry and the judge, and state from before it is moved in, with a log line."""

import logging
import sqlite3

from avdag.core.common.atomic import write_json_atomic
from avdag.core.ingest.registry import Registration
from avdag.resources.judge import OpenAIJudgeResource
from avdag.resources.registry import ClipRegistryResource
from avdag.settings import Settings
from avdag_tests.support.ledger_node import a_submission


def test_the_db_url_setting_reaches_the_registry_and_the_judge(tmp_path) -> None:
    from avdag.definitions import build_resources  # all of the Dagster definitions: only this test needs them

    env = {"AVDAG_HOME": str(tmp_path), "OPENAI_API_KEY": "sk-test"}
    shared = build_resources(Settings.from_env(env | {"AVDAG_DB_URL": "postgresql://avdag@db:5432/avdag"}))
    assert shared["clip_registry"].db_url == shared["judge"].db_url == "postgresql://avdag@db:5432/avdag"
    local = build_resources(Settings.from_env(env))
    assert local["clip_registry"].db_url == local["judge"].db_url == f"sqlite:///{tmp_path / 'avdag.sqlite'}"


def test_state_from_before_the_database_is_imported_once_and_said_in_the_log(db_url, tmp_path, monkeypatch, caplog):
    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    with sqlite3.connect(home / "registry.sqlite") as db:  # the files avdag wrote before AVDAG_DB_URL
        db.executescript(
            "CREATE TABLE clips (sha256 TEXT PRIMARY KEY, clip_id TEXT, batch TEXT, source_url TEXT);"
            "CREATE TABLE sources (sha256 TEXT, batch TEXT, clip_id TEXT, source_url TEXT);"
            "INSERT INTO clips VALUES ('sha-1', 'a', 'b1', 's3://l/b1/a.mp4');"
        )
    with sqlite3.connect(home / "cache" / "judge.sqlite") as db:
        db.executescript(
            "CREATE TABLE verdicts (key TEXT PRIMARY KEY, score INTEGER, reply TEXT, scope TEXT, created REAL);"
            "INSERT INTO verdicts VALUES ('k1', 5, '<answer>5</answer>', 's', 1.0);"
        )
    write_json_atomic(home / "judge_batches" / "k2.json", a_submission("k2", "batch_old").as_dict())
    monkeypatch.setenv("AVDAG_HOME", str(home))
    judge = OpenAIJudgeResource(api_key="sk-test", db_url=db_url, use_batch_api=True)

    with caplog.at_level(logging.INFO):
        registry = ClipRegistryResource(db_url=db_url).registry()
        cache = judge.cache()
        tracker = judge.batch_tracker()
    imported = [r.getMessage() for r in caplog.records if r.getMessage().startswith("imported")]
    assert [message.split(" from ")[0] for message in imported] == [
        "imported 1 clip registrations",
        "imported 1 judge verdicts",
        "imported 1 judge batch records",
    ]
    assert all("no longer read" in message for message in imported)
    assert registry.register("b2", "c", "sha-1", "s3://l/b2/c.mp4") == Registration("duplicate", "a", "b1")
    assert cache.lookup(["k1"]) == {"k1": (5, "<answer>5</answer>")}
    assert [s.parts[0].batch_id for s in tracker.ledger.uncollected()] == ["batch_old"], "the sensor still watches it"

    caplog.clear()
    with caplog.at_level(logging.INFO):
        ClipRegistryResource(db_url=db_url).registry()
        judge.cache()
        judge.batch_tracker()
    assert not [r for r in caplog.records if "imported" in r.getMessage()], "once"
