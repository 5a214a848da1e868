"""The dedup registry on SQLite and on Postgres: who owns which content, also when runs on two nodes race."""

import multiprocessing
import random
import sqlite3

from avdag.core.ingest.registry import ClipRegistry, Registration

RACED = 150  # contents both processes register at once


def test_first_upload_wins_later_copies_are_duplicates_and_every_source_is_kept(db_url):
    registry = ClipRegistry(db_url)
    assert registry.register("b1", "a", "sha-1", "s3://l/b1/a.mp4") == Registration("clip", "a", "b1")
    assert registry.register("b1", "a", "sha-1", "s3://l/b1/a.mp4") == Registration("clip", "a", "b1"), "idempotent"
    assert registry.register("b2", "copy", "sha-1", "s3://l/b2/copy.mp4") == Registration("duplicate", "a", "b1")
    assert registry.register("b1", "a2", "sha-1", "s3://l/b1/a2.mp4") == Registration("duplicate", "a", "b1")
    assert registry.sources("sha-1") == [
        ("b1", "a", "s3://l/b1/a.mp4"),
        ("b1", "a2", "s3://l/b1/a2.mp4"),
        ("b2", "copy", "s3://l/b2/copy.mp4"),
    ]


def test_a_clip_id_of_another_batch_is_a_conflict_and_a_changed_reupload_replaces_its_own(db_url):
    registry = ClipRegistry(db_url)
    registry.register("b1", "a", "sha-1", "s3://l/b1/a.mp4")
    assert registry.register("b2", "a", "sha-2", "s3://l/b2/a.mp4") == Registration("id_conflict", "a", "b1")
    assert registry.register("b1", "a", "sha-3", "s3://l/b1/a.mp4") == Registration("clip", "a", "b1")
    # The replaced content is free again: a later upload of it is a clip of its own.
    assert registry.register("b3", "old", "sha-1", "s3://l/b3/old.mp4") == Registration("clip", "old", "b3")
    assert ClipRegistry(db_url).register("b4", "x", "sha-3", "s3://l/b4/x.mp4") == Registration("duplicate", "a", "b1")


def _register_all(url: str, batch: str, ready, results) -> None:
    ready.wait(timeout=60)  # every process starts together
    registry = ClipRegistry(url)  # both processes also create the schema at once
    outcomes = [registry.register(batch, f"{batch}-{n}", f"sha-{n}", f"s3://l/{batch}/{n}.mp4") for n in range(RACED)]
    results.put((batch, [(o.status, o.clip_id, o.batch) for o in outcomes]))


def _race(target, db_url: str) -> dict:
    """Run `target(db_url, batch, ready, results)` for batches b1 and b2 in two processes started
    together; returns what each put in `results`, by batch."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ready = context.Barrier(2)
    workers = [context.Process(target=target, args=(db_url, b, ready, results)) for b in ("b1", "b2")]
    for worker in workers:
        worker.start()
    outcomes = dict(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return outcomes


def test_two_nodes_registering_the_same_content_end_with_one_clip_each(db_url):
    """Two processes register the same 150 videos, each under its own batch and clip ids, at the same moment."""
    outcomes = _race(_register_all, db_url)
    registry = ClipRegistry(db_url)
    winners = {"b1": 0, "b2": 0}
    for n in range(RACED):
        mine, theirs = outcomes["b1"][n], outcomes["b2"][n]
        assert sorted([mine[0], theirs[0]]) == ["clip", "duplicate"], (n, mine, theirs)
        assert mine[1:] == theirs[1:], "the duplicate names the clip that won"
        winners[mine[2]] += 1
        assert [batch for batch, _, _ in registry.sources(f"sha-{n}")] == ["b1", "b2"]
    assert sum(winners.values()) == RACED


def test_an_old_registry_file_is_imported_into_an_empty_database_once(db_url, tmp_path):
    old = tmp_path / "registry.sqlite"
    with sqlite3.connect(old) as db:  # the schema avdag used before AVDAG_DB_URL
        db.executescript(
            "CREATE TABLE clips (sha256 TEXT PRIMARY KEY, clip_id TEXT, batch TEXT, source_url TEXT);"
            "CREATE TABLE sources (sha256 TEXT, batch TEXT, clip_id TEXT, source_url TEXT,"
            " PRIMARY KEY (batch, source_url));"
            "INSERT INTO clips VALUES ('sha-1', 'a', 'b1', 's3://l/b1/a.mp4');"
            "INSERT INTO sources VALUES ('sha-1', 'b1', 'a', 's3://l/b1/a.mp4'), ('sha-1', 'b2', 'c', 's3://l/b2/c.mp4');"
        )
    registry = ClipRegistry(db_url)
    assert registry.import_legacy(tmp_path / "missing.sqlite") == 0
    assert registry.import_legacy(old) == 1
    assert registry.import_legacy(old) == 0, "a registry in use is never overwritten"
    assert registry.register("b3", "z", "sha-1", "s3://l/b3/z.mp4") == Registration("duplicate", "a", "b1")
    assert [source[0] for source in registry.sources("sha-1")] == ["b1", "b2", "b3"]


def _twin_signature(n: int) -> str:
    """Sixteen random 64-bit frame hashes, the same for both copies of content n (~32 bits from any other n)."""
    rng = random.Random(n)
    return "".join(f"{rng.getrandbits(64):016x}" for _ in range(16))


def _sign_all(url: str, batch: str, ready, results) -> None:
    ready.wait(timeout=60)
    registry = ClipRegistry(url)
    records = [
        registry.signature_record(batch, f"{batch}-{n}", f"{batch}-sha-{n}", lambda n=n: _twin_signature(n))
        for n in range(RACED)
    ]
    results.put((batch, [(r.sha256, r.twin_sha256, r.distance) for r in records]))


def test_two_nodes_signing_twins_at_once_flag_every_pair_exactly_once(db_url):
    """Two processes register 150 pairs of twins (same frames, different bytes) at the same moment: each
    twin search must see every signature committed before it, so of each pair exactly the later one
    names the other at distance 0. Without serialized searches, Postgres lets both miss each other."""
    outcomes = _race(_sign_all, db_url)
    unflagged, flagged_twice = [], []
    for n in range(RACED):
        (sha1, twin1, d1), (sha2, twin2, d2) = outcomes["b1"][n], outcomes["b2"][n]
        names_other = [twin1 == sha2 and d1 == 0.0, twin2 == sha1 and d2 == 0.0]
        if not any(names_other):
            unflagged.append(n)
        elif all(names_other):
            flagged_twice.append(n)
    assert (unflagged, flagged_twice) == ([], []), f"{len(unflagged)} pairs missed, {len(flagged_twice)} flagged twice"
