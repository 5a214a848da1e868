"""Bad inputs in the landing zone, locally and over S3 (a loopback moto server through s3fs).

The ingest contract: every data file of a batch ends as exactly one clip row (a video, or the
valid label on its row) or exactly one quarantine record naming that file, with the expected
check and a reason that says what is wrong. Nothing extra, nothing missing, and no object key
can make ingest write outside its cache folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from avdag.core.common.database import sqlite_url
from avdag.core.ingest.landing import LABEL_SUFFIX, READY_MARKER, VIDEO_SUFFIX, LandingZone
from avdag.core.ingest.registry import ClipRegistry
from avdag.core.ingest.upload_batch import BatchOnlyRegistry, IngestLimits, ingest_batch
from avdag.core.ingest.upload_watch import plan_tick
from avdag_tests.support.bad_inputs import (
    CUT_UPLOAD,
    DUPLICATE_COPY,
    DUPLICATE_SOURCE,
    build_corpus,
    build_duplicate_batch,
    encode_clip,
    s3_only_inputs,
)
from avdag_tests.support.media import cut_tail, unique_copy

BATCH = "batch-2024_01.a"
BUCKET = "landing-bucket"

# Every kind the brief names, by the check it must end in.
EXPECTED_CHECKS = {
    "clip",
    "layout",
    "clip_name",
    "video_size",
    "video_decodable",
    "truncated",
    "video_bounds",
    "duplicate",
    "label_json",
    "label_schema",
    "orphan_label",
}


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The bad-input batch, built once: <root>/<BATCH>/..., never modified by a test."""
    root = tmp_path_factory.mktemp("landing")
    return build_corpus(root / BATCH)


@pytest.fixture(scope="module")
def base_clip(tmp_path_factory) -> bytes:
    return encode_clip(tmp_path_factory.mktemp("clip") / "base.mp4").read_bytes()


def s3_zone(s3, prefix: str) -> LandingZone:
    return LandingZone(f"s3://{prefix}", s3.storage_options())


# --- accounting ---------------------------------------------------------------------------------


def account(clips, quarantine, prefix: str) -> dict[str, list[tuple[str, str]]]:
    """relative path -> every (outcome, reason) ingest gave it; a valid label is accounted by its row."""
    outcomes: dict[str, list[tuple[str, str]]] = defaultdict(list)

    def rel(url: str) -> str:
        assert url.startswith(prefix), f"{url!r} is not under {prefix!r}"
        return url[len(prefix) :]

    for row in clips:
        outcomes[rel(row["source_url"])].append(("clip", ""))
        if row["label_json"] is not None:
            outcomes[rel(row["label_url"])].append(("clip", ""))
    for record in quarantine:
        assert record.batch == prefix.rstrip("/").rsplit("/", 1)[-1]
        outcomes[rel(record.file)].append((record.check, record.reason))
    return dict(outcomes)


def assert_accounted(expected: dict[str, str], reasons: dict[str, tuple[str, ...]], clips, quarantine, prefix: str):
    outcomes = account(clips, quarantine, prefix)
    missing = sorted(set(expected) - set(outcomes))
    extra = sorted(set(outcomes) - set(expected))
    twice = {rel: got for rel, got in outcomes.items() if len(got) != 1}
    assert not missing, f"files with no clip row and no quarantine record: {missing}"
    assert not extra, f"outcomes for files never written: {extra}"
    assert not twice, f"files accounted for more than once: {twice}"
    wrong = {rel: (want, outcomes[rel][0]) for rel, want in expected.items() if outcomes[rel][0][0] != want}
    assert not wrong, f"(expected check, got) per file: {wrong}"
    vague = {
        rel: (want, outcomes[rel][0][1])
        for rel, want in reasons.items()
        if not all(part in outcomes[rel][0][1] for part in want)
    }
    assert not vague, f"reasons missing the expected words: {vague}"


def assert_rows(corpus, clips, prefix: str):
    """Clip rows carry the label URL when a label exists and its canonical JSON only when it is valid."""
    rows = {row["source_url"][len(prefix) :]: row for row in clips}
    for rel, row in rows.items():
        clip_id = rel.removeprefix("videos/").removesuffix(VIDEO_SUFFIX)
        label_rel = f"metas/{clip_id}{LABEL_SUFFIX}"
        assert row["label_url"] == (prefix + label_rel if label_rel in corpus else None), rel
        assert (row["label_json"] is not None) == (corpus.labels[rel] is not None), rel
        assert row["clip_id"] == clip_id and row["duration_s"] >= 1.0 and (row["width"], row["height"]) == (128, 72)
    good_b = json.loads(rows[f"videos/good_b{VIDEO_SUFFIX}"]["label_json"])
    assert (good_b["weather"], good_b["lighting"]) == ("Overcast", "Daytime (low-contrast daylight)")
    good_c = json.loads(rows[f"videos/good_c{VIDEO_SUFFIX}"]["label_json"])
    assert (good_c["rule_violation"], good_c["interesting_scenario"], good_c["driving_difficulty"]) == (
        "True",
        "False",
        3,
    )


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


# --- the corpus itself --------------------------------------------------------------------------


def test_corpus_covers_every_kind(corpus):
    batch_dir = corpus.batch_dir
    written = {p.relative_to(batch_dir).as_posix() for p in files_under(batch_dir)} - {READY_MARKER}
    assert written == set(corpus), "build_corpus must return every file it wrote"
    assert set(corpus.values()) == EXPECTED_CHECKS
    assert all(rel in corpus.reasons for rel, outcome in corpus.items() if outcome != "clip")
    assert (batch_dir / READY_MARKER).stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in files_under(batch_dir))
    oversized = (batch_dir / f"videos/oversized{VIDEO_SUFFIX}").stat().st_size
    assert oversized > corpus.limits.max_size_bytes
    # Only the size limit is tightened; the corpus clips (1.5 s, 128x72) meet the default bounds.
    assert corpus.limits == IngestLimits(max_size_bytes=corpus.limits.max_size_bytes)
    assert sum(outcome == "clip" and rel.startswith("videos/") for rel, outcome in corpus.items()) >= 3


# --- local landing zone -------------------------------------------------------------------------


def test_local_every_file_accounted_once(corpus, tmp_path):
    root = corpus.batch_dir.parent
    zone = LandingZone(str(root))
    assert zone.list_batches() == [BATCH]
    assert zone.marker_signature(BATCH) is not None
    clips, quarantine = ingest_batch(
        zone,
        zone.list_batch(BATCH),
        tmp_path / "cache",
        limits=corpus.limits,
        registry=ClipRegistry(sqlite_url(tmp_path / "reg.sqlite")),
    )
    prefix = f"{zone.root}/{BATCH}/"
    assert_accounted(corpus, corpus.reasons, clips, quarantine, prefix)
    assert_rows(corpus, clips, prefix)
    # A local zone decodes files in place: nothing is copied into the cache, and no row names a local copy.
    assert all("local_path" not in row for row in clips)
    assert not (tmp_path / "cache").exists() or not files_under(tmp_path / "cache")


def test_cross_batch_duplicate_is_quarantined_and_reingest_is_idempotent(corpus, tmp_path):
    root = tmp_path / "landing"
    shutil.copytree(corpus.batch_dir, root / BATCH)
    source = root / BATCH / "videos" / f"{DUPLICATE_SOURCE}{VIDEO_SUFFIX}"
    second = "batch-2024_02"
    expected_second = build_duplicate_batch(root / second, source, "renamed_upload")
    zone = LandingZone(str(root))
    registry = ClipRegistry(sqlite_url(tmp_path / "reg.sqlite"))

    def run(batch, **kw):
        return ingest_batch(zone, zone.list_batch(batch), tmp_path / "cache", registry=registry, **kw)

    first = run(BATCH, limits=corpus.limits)
    clips2, quarantine2 = run(second)
    prefix2 = f"{zone.root}/{second}/"
    assert_accounted(
        expected_second,
        {
            f"videos/renamed_upload{VIDEO_SUFFIX}": (f"same content as clip {DUPLICATE_SOURCE} of batch {BATCH}",),
            f"metas/renamed_upload{LABEL_SUFFIX}": ("its video renamed_upload was quarantined", f"batch {BATCH}"),
        },
        clips2,
        quarantine2,
        prefix2,
    )

    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert registry.sources(sha) == [
        (BATCH, DUPLICATE_SOURCE, str(source)),
        (BATCH, DUPLICATE_COPY, f"{zone.root}/{BATCH}/videos/{DUPLICATE_COPY}{VIDEO_SUFFIX}"),
        (second, "renamed_upload", f"{prefix2}videos/renamed_upload{VIDEO_SUFFIX}"),
    ]
    # Re-running either batch gives the same answers: same rows, same quarantine, no new sources.
    assert run(BATCH, limits=corpus.limits) == first
    assert run(second) == (clips2, quarantine2)
    assert len(registry.sources(sha)) == 3


# --- S3 landing zone ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_corpus(s3, corpus, base_clip):
    """The corpus uploaded to the bucket, plus keys only S3 can hold; returns (expected, reasons)."""
    s3.make_bucket(BUCKET)
    prefix = f"{BUCKET}/landing/{BATCH}"
    s3.upload_dir(corpus.batch_dir, prefix, markers=False)
    expected, reasons = dict(corpus), dict(corpus.reasons)
    for item in s3_only_inputs(base_clip):
        s3.put(f"{prefix}/{item.rel}", item.data)
        expected[item.rel], reasons[item.rel] = item.check, (item.reason,)
    s3.put(f"{prefix}/{READY_MARKER}", b"")
    return expected, reasons


def test_s3_keys_are_stored_verbatim(s3, s3_corpus):
    """The hostile keys really reach the bucket as written ('..' and '.' segments, '/' at the end)."""
    expected, _ = s3_corpus
    listed = {path.split(f"/{BATCH}/", 1)[1] for path in s3.fs().find(f"{BUCKET}/landing/{BATCH}", withdirs=False)}
    assert listed == set(expected) | {READY_MARKER}


def test_s3_every_file_accounted_once_and_nothing_escapes(s3, corpus, s3_corpus, tmp_path):
    expected, reasons = s3_corpus
    work = tmp_path / "work"
    cache = work / "cache"
    zone = s3_zone(s3, f"{BUCKET}/landing")
    assert zone.list_batches() == [BATCH]
    assert zone.marker_signature(BATCH) is not None
    registry = ClipRegistry(sqlite_url(work / "reg.sqlite"))
    clips, quarantine = ingest_batch(zone, zone.list_batch(BATCH), cache, limits=corpus.limits, registry=registry)
    prefix = f"s3://{BUCKET}/landing/{BATCH}/"
    assert_accounted(expected, reasons, clips, quarantine, prefix)
    assert_rows(corpus, clips, prefix)

    # The probed copies live under the cache, hold the objects' bytes, and nothing else was written.
    copies = {hashlib.sha256(path.read_bytes()).hexdigest() for path in files_under(cache)}
    for row in clips:
        assert "local_path" not in row  # a row names its video by source URL and sha256 only
        assert row["sha256"] in copies
        assert hashlib.sha256(s3.fs().cat_file(row["source_url"].removeprefix("s3://"))).hexdigest() == row["sha256"]
    stray = {p for p in files_under(tmp_path) if not p.resolve().is_relative_to(cache.resolve())}
    assert {p.name for p in stray} <= {"reg.sqlite", "reg.sqlite-wal", "reg.sqlite-shm"}, stray
    assert not any("escape" in p.name for p in files_under(tmp_path))
    assert not Path(f"/tmp/escape_abs{VIDEO_SUFFIX}").exists()
    # Only the videos that got as far as decoding were downloaded (layout, name and size checks come first).
    downloaded = sum(
        1
        for rel, outcome in expected.items()
        if rel.startswith("videos/")
        and "/" not in rel[7:]
        and rel.endswith(VIDEO_SUFFIX)
        and outcome not in ("layout", "clip_name", "video_size")
    )
    assert len(files_under(cache)) == downloaded


def test_s3_local_copy_of_a_dot_dot_key_stays_in_the_cache(s3, s3_corpus, tmp_path):
    """Even called directly with an escaping key, local_copy writes under cache_dir only."""
    zone = s3_zone(s3, f"{BUCKET}/landing")
    cache = tmp_path / "a" / "b" / "cache"
    for item in s3_only_inputs(b""):
        if ".." not in item.rel:
            continue
        url = f"s3://{BUCKET}/landing/{BATCH}/{item.rel}"
        local = zone.local_copy(url, cache)
        assert local.resolve().is_relative_to(cache.resolve())
        assert local.read_bytes() == s3.fs().cat_file(url.removeprefix("s3://"))
    assert all(p.resolve().is_relative_to(cache.resolve()) for p in files_under(tmp_path))


def test_s3_readiness_marker_and_fingerprint(s3, corpus):
    s3.make_bucket(BUCKET)
    prefix = f"{BUCKET}/ready-test"
    batch = "batch-unsealed"
    s3.upload_dir(corpus.batch_dir, f"{prefix}/{batch}", markers=False)
    zone = s3_zone(s3, prefix)
    assert zone.list_batches() == [batch]
    assert zone.marker_signature(batch) is None
    plan = plan_tick(zone, None)
    assert plan.waiting == [batch] and plan.launch == []

    s3.put(f"{prefix}/{batch}/{READY_MARKER}", b"")
    signature = zone.marker_signature(batch)
    assert signature is not None and signature.startswith(f"{READY_MARKER}:0:")
    fingerprint = zone.batch_fingerprint(batch)
    plan = plan_tick(zone, plan.cursor())
    assert plan.launch == [(batch, fingerprint)]

    # Stable: a fresh zone, and a re-written marker over identical content, give the same fingerprint.
    assert s3_zone(s3, prefix).batch_fingerprint(batch) == fingerprint
    s3.put(f"{prefix}/{batch}/{READY_MARKER}", b"re-upload 2")
    assert zone.marker_signature(batch) not in (None, signature)
    assert zone.batch_fingerprint(batch) == fingerprint
    plan = plan_tick(zone, plan.cursor())
    assert plan.launch == [] and plan.same_content_reuploads == [batch]

    # A changed video (even of the same size) changes it.
    key = f"{prefix}/{batch}/videos/good_b{VIDEO_SUFFIX}"
    old = s3.fs().cat_file(key)
    s3.put(key, old[:-1] + bytes([old[-1] ^ 0xFF]))
    changed = zone.batch_fingerprint(batch)
    assert changed != fingerprint
    s3.put(f"{prefix}/{batch}/{READY_MARKER}", b"re-upload 3")
    plan = plan_tick(zone, plan.cursor())
    assert plan.launch == [(batch, changed)]


def test_s3_production_zone_sees_new_batches_on_later_ticks(s3, base_clip):
    """The sensor's zone (LandingZoneResource.zone(), a new one each tick, in one long-lived process)
    must not serve s3fs's cached listings: a batch made after the first tick, and a marker written
    after it, are seen on the next one."""
    import s3fs

    from avdag.resources.storage import LandingZoneResource

    s3.make_bucket("sensor-bucket")
    resource = LandingZoneResource(url="s3://sensor-bucket/landing", s3_endpoint_url=s3.endpoint_url)
    s3fs.S3FileSystem.clear_instance_cache()
    for name in ("batch-a", "batch-b"):
        s3.put(f"sensor-bucket/landing/{name}/videos/clip{VIDEO_SUFFIX}", unique_copy(base_clip, name))
    s3.put(f"sensor-bucket/landing/batch-a/{READY_MARKER}", b"")
    tick1 = plan_tick(resource.zone(), None)  # as the sensor does: a new zone object every tick
    assert [b for b, _ in tick1.launch] == ["batch-a"] and tick1.waiting == ["batch-b"]

    s3.put(f"sensor-bucket/landing/batch-b/{READY_MARKER}", b"")
    s3.put(f"sensor-bucket/landing/batch-c/videos/clip{VIDEO_SUFFIX}", unique_copy(base_clip, "batch-c"))
    s3.put(f"sensor-bucket/landing/batch-c/{READY_MARKER}", b"")
    zone = resource.zone()
    assert zone.list_batches() == ["batch-a", "batch-b", "batch-c"], "new batch folder invisible (stale listing)"
    tick2 = plan_tick(zone, tick1.cursor())
    assert sorted(b for b, _ in tick2.launch) == ["batch-b", "batch-c"]


# --- through Dagster ------------------------------------------------------------------------------


def test_raw_clips_quarantines_a_cut_upload_and_registers_the_rest(tmp_path):
    """The ingest asset on a batch holding an upload cut after its index: the clip and its label are
    quarantined as `truncated` (counted in the asset metadata), every other clip is registered."""
    import dagster as dg

    from avdag.definitions import defs
    from avdag.defs.pipeline.partitions import clip_batches
    from avdag.demo.sample_batch import REAL_CLIP_ID, write_sample_batch
    from avdag_tests.support.bad_inputs import REAL_VIDEO_PATH, real_label
    from avdag_tests.support.pipeline_helpers import small_resources

    batch = "batch-cut"
    good = write_sample_batch(tmp_path, batch, n_synthetic=2, seed=5)
    (tmp_path / batch / "videos" / f"{CUT_UPLOAD}{VIDEO_SUFFIX}").write_bytes(cut_tail(REAL_VIDEO_PATH, 0.1))
    (tmp_path / batch / "metas" / f"{CUT_UPLOAD}{LABEL_SUFFIX}").write_text(json.dumps(real_label()))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(clip_batches.name, [batch])
        result = dg.materialize(
            list(defs.assets),
            selection=["raw_clips", "clip_quarantine"],
            partition_key=batch,
            resources=small_resources(str(tmp_path)),
            instance=instance,
        )
        metadata = instance.fetch_materializations(dg.AssetKey("clip_quarantine"), limit=1).records[0]
        metadata = metadata.asset_materialization.metadata
    assert result.success
    clips = result.output_for_node("raw_clips", "raw_clips")
    quarantine = result.output_for_node("raw_clips", "clip_quarantine")
    assert sorted(clips["clip_id"]) == sorted(good) and REAL_CLIP_ID in good
    assert clips.set_index("clip_id").loc[REAL_CLIP_ID, "duration_s"] == pytest.approx(8.84, abs=0.05)
    assert sorted(quarantine["file"].str.rsplit("/", n=1).str[-1]) == [
        f"{CUT_UPLOAD}{VIDEO_SUFFIX}",
        f"{CUT_UPLOAD}{LABEL_SUFFIX}",
    ]
    assert set(quarantine["check"]) == {"truncated"}
    video_reason = quarantine.loc[quarantine["file"].str.endswith(VIDEO_SUFFIX), "reason"].item()
    assert "declares 8.84s" in video_reason and "stream ends at 0.80s" in video_reason
    assert metadata["quarantined_truncated"].value == 2 and metadata["quarantined"].value == 2


# --- regressions: bugs found by this suite and fixed ----------------------------------------------


def test_s3_reupload_of_same_size_video_is_downloaded_again(s3, base_clip, tmp_path):
    s3.make_bucket(BUCKET)
    prefix = f"{BUCKET}/reupload"
    key = f"{prefix}/batch-r/videos/clip{VIDEO_SUFFIX}"
    v1, v2 = unique_copy(base_clip, "version-1"), unique_copy(base_clip, "version-2")
    assert len(v1) == len(v2) and v1 != v2
    s3.put(key, v1)
    s3.put(f"{prefix}/batch-r/{READY_MARKER}", b"")
    zone = s3_zone(s3, prefix)
    clips, _ = ingest_batch(zone, zone.list_batch("batch-r"), tmp_path / "cache", registry=BatchOnlyRegistry())
    assert clips[0]["sha256"] == hashlib.sha256(v1).hexdigest()
    before = zone.batch_fingerprint("batch-r")

    s3.put(key, v2)  # the fixed upload, same size
    s3.put(f"{prefix}/batch-r/{READY_MARKER}", b"again")
    assert zone.batch_fingerprint("batch-r") != before  # the sensor does reprocess the batch
    clips, _ = ingest_batch(zone, zone.list_batch("batch-r"), tmp_path / "cache", registry=BatchOnlyRegistry())
    assert clips[0]["sha256"] == hashlib.sha256(v2).hexdigest(), "stale cached download used"


def test_underscore_files_below_the_batch_root_are_accounted(base_clip, tmp_path):
    batch_dir = tmp_path / "landing" / "batch-u"
    files = {
        f"videos/good{VIDEO_SUFFIX}": ("clip", base_clip),
        "videos/_upload.part": ("layout", base_clip[:100]),
        "metas/sub/_notes.txt": ("layout", b"notes"),
    }
    for rel, (_, data) in files.items():
        (batch_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (batch_dir / rel).write_bytes(data)
    (batch_dir / READY_MARKER).write_bytes(b"")
    zone = LandingZone(str(tmp_path / "landing"))
    clips, quarantine = ingest_batch(zone, zone.list_batch("batch-u"), tmp_path / "cache")
    assert_accounted({rel: check for rel, (check, _) in files.items()}, {}, clips, quarantine, f"{zone.root}/batch-u/")
