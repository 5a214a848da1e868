"""The judge verdict cache on SQLite and on Postgres: one verdict per key, also when two nodes store it at once."""

import multiprocessing
import sqlite3

import pytest

from avdag.core.judging.verdict_cache import JudgeCache

KEYS = [f"key-{n}" for n in range(300)]


def test_a_key_keeps_its_first_verdict(db_url):
    cache = JudgeCache(db_url)
    cache.store("scope", [("k", 4, "<answer>4</answer>")])
    cache.store("scope", [("k", 2, "<answer>2</answer>"), ("k2", 5, "<answer>5</answer>")])
    assert JudgeCache(db_url).lookup(["k", "k2", "missing"]) == {
        "k": (4, "<answer>4</answer>"),
        "k2": (5, "<answer>5</answer>"),
    }
    assert len(cache) == 2
    with pytest.raises(ValueError, match="score"):
        cache.store("scope", [("k3", None, "no verdict")])


def _store_all(url: str, writer: str, ready) -> None:
    ready.wait(timeout=60)  # every process starts together
    cache = JudgeCache(url)
    for start in range(0, len(KEYS), 10):  # as scoring stores them: a chunk of verdicts at a time
        cache.store("scope", [(key, 3, f"{writer} judged {key}") for key in KEYS[start : start + 10]])


def test_two_nodes_storing_the_same_verdicts_at_once_keep_one_row_per_key(db_url):
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(2)
    workers = [context.Process(target=_store_all, args=(db_url, name, ready)) for name in ("node-a", "node-b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    cache = JudgeCache(db_url)
    found = cache.lookup(KEYS)
    assert len(cache) == len(KEYS) and sorted(found) == sorted(KEYS)
    assert all(reply in (f"node-a judged {key}", f"node-b judged {key}") for key, (_, reply) in found.items())


def test_an_old_verdict_file_is_imported_into_an_empty_cache(db_url, tmp_path):
    old = tmp_path / "judge.sqlite"
    with sqlite3.connect(old) as db:  # the schema avdag used before AVDAG_DB_URL
        db.executescript(
            "CREATE TABLE verdicts (key TEXT PRIMARY KEY, score INTEGER, reply TEXT, scope TEXT, created REAL);"
            "INSERT INTO verdicts VALUES ('k1', 5, '<answer>5</answer>', 's', 1.0),"
            " ('k2', 1, '<answer>1</answer>', 's', 2.0);"
        )
    cache = JudgeCache(db_url)
    assert cache.import_legacy(old) == 2 and cache.import_legacy(old) == 0
    assert cache.lookup(["k1", "k2"]) == {"k1": (5, "<answer>5</answer>"), "k2": (1, "<answer>1</answer>")}
