"""Smoke test of the ingest benchmark on tiny sizes: report structure and deterministic counts.

No timing is asserted. The counts are deterministic (every measured tick makes the same calls), so
they can be compared exactly across history sizes.
"""

import json

import pytest

from avdag_tests.bench import bench_ingest as bench

HISTORY = (5, 20)  # clips already ingested; one clip per batch -> 5 vs 20 known batches
RECHECK = 2  # re-check window full at both sizes, so it cannot explain a difference
NEW_CLIPS = 3


def _sensor(backend):
    try:
        sensor = bench.bench_sensor(
            backend,
            HISTORY,
            clips_per_batch=1,
            new_batch_clips=NEW_CLIPS,
            repeats=2,
            naive_repeats=1,
            max_launches=5,
            recheck=RECHECK,
        )
    finally:
        backend.close()
    return bench.add_ratios(sensor)


@pytest.fixture(scope="module")
def sensors():
    pytest.importorskip("moto.server")
    return {"local": _sensor(bench.LocalBackend()), "s3": _sensor(bench.S3Backend())}


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    clips = bench.make_probe_clips(tmp_path_factory.mktemp("probe"), 2, seed=0)
    return bench.bench_probe(clips, repeats=1)


BACKENDS = ("local", "s3")


def _rows(sensors, backend):
    small, large = sensors[backend]["rows"]
    return small, large


@pytest.mark.parametrize("backend", BACKENDS)
def test_sensor_report_structure(sensors, backend):
    sensor = sensors[backend]
    assert sensor["backend"] == backend and sensor["recheck"] == RECHECK
    assert [r["history_clips"] for r in sensor["rows"]] == list(HISTORY)
    for row in sensor["rows"]:
        assert row["history_batches"] == row["history_clips"]
        assert row["recheck_window"] == RECHECK
        assert row["counts_stable"], "two identical ticks made different calls"
        assert row["tick_ms_median"] > 0 and len(row["tick_ms_all"]) == 2 and row["naive_ms_median"] > 0
        assert row["fs_calls"] == sum(row["fs_calls_by_method"].values()) == sum(row["fs_calls_by_scope"].values())
        assert row["objects_inspected"] == row["entries_listed"] + row["paths_probed"]
        assert row["fs_calls_by_scope"].get("new", 0) > 0, "the new batch was never looked at"
        if backend == "s3":
            assert row["s3_requests"] >= row["fs_calls"] and row["backend_list_baseline_ms"] > 0
    assert set(sensor["ratios"]) == {"last_vs_first"}
    assert isinstance(sensor["within_20_percent_goal"], bool)


@pytest.mark.parametrize("backend", BACKENDS)
def test_naive_listing_grows_with_history(sensors, backend):
    for row in _rows(sensors, backend):
        # every clip + one _READY per batch, history and new batch alike
        assert row["naive_entries"] == row["history_clips"] + row["history_batches"] + NEW_CLIPS + 1
    small, large = _rows(sensors, backend)
    assert large["naive_entries"] > small["naive_entries"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_history_inside_a_batch_costs_nothing(backend, tmp_path):
    """More clips in the same number of batches: the tick makes exactly the same calls."""
    if backend == "s3":
        pytest.importorskip("moto.server")
    store = bench.LocalBackend() if backend == "local" else bench.S3Backend()
    try:
        rows = [
            bench.measure_history(
                store,
                clips,
                clips_per_batch=clips,
                new_batch_clips=NEW_CLIPS,
                repeats=1,
                naive_repeats=1,
                max_launches=5,
                recheck=RECHECK,
            )
            for clips in HISTORY
        ]
    finally:
        store.close()
    keys = ("fs_calls_by_method_scope", "entries_listed", "paths_probed") + (
        ("s3_requests",) if backend == "s3" else ()
    )
    assert [rows[0][k] for k in keys] == [rows[1][k] for k in keys]


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_batch_tick_touches_no_ingested_batch(sensors, backend):
    """A tick that finds a new batch never calls into already-ingested batches.

    The root listing itself returns one entry per known batch (the documented "one shallow listing
    of batch folder names"); that is one call whatever the history, and its entry count is checked.
    """
    small, large = _rows(sensors, backend)
    for row in (small, large):
        assert not [k for k in row["fs_calls_by_method_scope"] if k.endswith("@known")]
        assert row["entries_listed"] == (row["history_batches"] + 1) + (NEW_CLIPS + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_avdag_tick_makes_the_same_calls_whatever_the_history(sensors, backend):
    small, large = _rows(sensors, backend)
    assert small["fs_calls"] == large["fs_calls"]
    assert small["paths_probed"] == large["paths_probed"]


def test_probe_report(probe):
    assert probe["clips"] == 3 and probe["repeats"] == 1
    assert probe["frame_counts_agree"], probe["disagreements"]
    assert probe["real_clip_frames"] > 0
    for name in ("avdag_probe_video", "naive_full_decode"):
        assert probe[name]["clips_per_s"] > 0 and probe[name]["real_clip_ms"] > 0
    assert probe["speedup"] > 0


@pytest.fixture(scope="module")
def sweeps():
    pytest.importorskip("moto.server")
    out = []
    for backend in (bench.LocalBackend(), bench.S3Backend()):
        try:
            out.append(bench.bench_batches(backend, (1, 3), clips_per_batch=2, clip_bytes=4 * 1024**2, repeats=1))
        finally:
            backend.close()
    return out


def test_batch_sweep_reads_nothing_and_grows_by_batches(sweeps):
    """Deterministic parts of the batch sweep: no object is read, calls grow by a fixed amount per batch,
    and (locally) clips 8x larger make exactly the same calls."""
    local, s3 = sweeps
    for sweep in sweeps:
        one, three = sweep["rows"]
        assert (one["batches"], three["batches"]) == (1, 3) and one["counts_stable"]
        assert one["object_reads"] == three["object_reads"] == 0
        assert three["fs_calls"] > one["fs_calls"]
    assert [r["fs_calls"] for r in local["rows"]] == [r["fs_calls"] for r in s3["rows"]]
    larger = local["larger_clips"]
    assert larger["clip_bytes"] == bench.BYTES_FACTOR * 4 * 1024**2 and larger["object_reads"] == 0
    assert larger["fs_calls"] == local["rows"][-1]["fs_calls"]
    assert "larger_clips" not in s3


def test_twin_search_gives_the_pairwise_answers():
    twins = bench.bench_twin_search((50, 200), queries=4, seed=0)
    assert [r["registered"] for r in twins["rows"]] == [50, 200]
    assert all(r["same_answers"] and r["index_ms"] > 0 and r["pairwise_ms"] > 0 for r in twins["rows"])


def test_formatted_report_and_json(sensors, sweeps, probe):
    twins = bench.bench_twin_search((20,), queries=2, seed=0)
    report = {"sensor": [sensors["local"], sensors["s3"]], "batches": sweeps, "probe": probe, "twin_search": twins}
    report["goals"] = bench.goals(report)
    assert set(report["goals"]) == {
        "reads_no_clip_bytes",
        "calls_flat_in_history",
        "tick_under_budget",
        "calls_linear_in_batches_local",
        "linear_in_batches_local",
        "flat_in_bytes",
        "calls_linear_in_batches_s3",
        "linear_in_batches_s3",
        "twin_search_same_answers",
        "twin_search_speedup",
    }
    # The deterministic goals hold on any machine; the timed ones are only printed.
    assert all(report["goals"][g] for g in ("reads_no_clip_bytes", "calls_flat_in_history", "twin_search_same_answers"))
    text = bench.format_report(report)
    for needle in ("sensor tick over N waiting batches", "32 MiB", "goals:", "no tick reads an object's bytes"):
        assert needle in text
    for needle in (
        "history=5",
        "history=20",
        "local  avdag tick",
        "s3     avdag tick",
        "S3 requests per tick",
        "naive full listing",
        "avdag probe_video",
        "naive full decode",
        "speedup x",
        "twin search per new clip",
        "twin search over 20 clips",
    ):
        assert needle in text
    assert json.loads(json.dumps(report, default=str))["sensor"][1]["backend"] == "s3"


@pytest.mark.slow
def test_captioning_bench_tiny_run(tmp_path):
    """The captioning benchmark end to end on 2 clips, a 2-step fine-tune, 16-token caps, 2 repeats: structure only."""
    from avdag_tests.bench import bench_captioning as captioning

    sizes = captioning.Sizes(
        real_copies=1,
        synthetic_clips=1,
        train_steps=2,
        repeats=2,
        decoder_passes=1,
        recipe_max_new_tokens=16,
        engine_max_new_tokens=16,
        batch_row=2,
    )
    report = captioning.run(sizes, tmp_path)
    text = captioning.format_report(report)
    for needle in (
        "(a) recipe loop",
        "(b1) avdag engine at the recipe's settings",
        "(b2) avdag engine at its defaults",
        "(bN) avdag engine at its defaults, batch 2",
        "(1) both at the recipe settings: (b1)/(a)",
        "(2) avdag defaults vs the recipe: (b2)/(a)",
        "goal: every reply ends by itself",
        "goal: (1) tokens/s >= 1x",
        "goal: (2) clips/s >= 1.2x",
        "qwen-vl-utils torchcodec reader",
        "avdag sample_frames",
        "recipe: decode all",
        "goal: avdag vs torchcodec reader, speed >= 1x",
        "fine-tune (not part of the comparison): 2 steps",
        "machine:",
    ):
        assert needle in text
    cap = report["captioning"]
    assert [r["loop"] for r in cap["rows"]] == [
        "recipe",
        "engine_recipe_settings",
        "engine_defaults",
        "engine_defaults_batch2",
    ]
    for row in cap["rows"]:
        assert row["clips"] == 2 and row["replies"] == 4 and len(row["runs"]) == 2
        assert row["clips_per_s"] > 0 and row["tokens_per_s"] > 0 and 0 < row["mean_new_tokens"] <= 16
    for comparison in ("recipe_settings", "defaults"):
        for rate in ("clips_per_s", "tokens_per_s"):
            ratio = cap[comparison][rate]
            assert len(ratio["values"]) == 2 and ratio["min"] <= ratio["median"] <= ratio["max"]
    dec = report["decoders"]
    for row in dec["rows"].values():
        assert len(row["runs"]) == 2 and row["seconds_per_clip"] > 0 and row["peak_rss_growth_kib"] >= 0
    assert set(dec["avdag_speed_vs"]) == {"qwen_vl_utils_torchcodec", "recipe_decode_all"}
    for agreement in dec["agreement"].values():
        assert agreement["clips"] == 2 and agreement["same_shape"] == 2 and agreement["mean_abs_pixel_diff"] is not None
    assert set(report["goals"]) == {
        "replies_end_by_themselves",
        "recipe_settings_tokens_per_s",
        "defaults_clips_per_s",
        "frame_sampling_speed_vs_torchcodec",
        "frame_sampling_memory_below_torchcodec",
    }
    assert not report["goals"]["replies_end_by_themselves"], "a 2-step fine-tune runs to the 16-token cap"
    assert report["model"]["steps"] == 2 and not report["model"]["cached"]
    assert json.loads(json.dumps(report, default=str))["clips"]["total"] == 2


def test_judge_bench_tiny_run(tmp_path):
    """The judge benchmark on 2 clips with 10 ms latency: every item judged once, the re-run all cache hits.

    The rate-limited part: 40 items under 1200 RPM (a bucket of 20), all scored, every 429 counted by the judge.
    """
    from avdag_tests.bench import bench_judge as judge_bench

    sizes = judge_bench.Sizes(clips=2, recipe_calls=3, latency_s=0.01, limited_items=40, limited_rpm=1200)
    report = judge_bench.run(sizes, tmp_path)
    text = judge_bench.format_report(report)
    for needle in (
        "(a) recipe loop (first 3 items",
        "(b) avdag, 64 in flight (default)",
        "(c) avdag, 16 in flight",
        "calls/s (b)/(a): x",
        "goal >= 50x",
        "(b2) re-run over the same items: 0 calls",
        "(d) rate limit of 1200 RPM, 40 items, 64 in flight",
        "of the limit (goal >= 90%:",
        "of requests (goal <= 25%:",
        "scored: 40/40 items",
        "machine:",
    ):
        assert needle in text
    limited = report["rate_limited"]
    assert limited["scored"] == limited["items"] == 40 and limited["failures"] == 0
    assert limited["server_requests"] == 40 + limited["server_rate_limited"] == limited["calls"]
    assert limited["rate_limited_calls"] == limited["server_rate_limited"]
    assert set(report["goals"]) == {
        "default_vs_recipe_50x",
        "rerun_no_calls",
        "rate_limited_90pct_of_limit",
        "rate_limited_waste_25pct",
        "rate_limited_every_item_scored",
    }
    assert report["goals"]["rerun_no_calls"] and report["goals"]["rate_limited_every_item_scored"]
    # two (a)/(b) pairs, the second in the other order; the ratio is their median, with its spread
    assert [r["order"] for r in report["repeats"]] == [["recipe", "avdag"], ["avdag", "recipe"]]
    low, high = report["ratio_spread"]
    assert low <= report["ratio_default_vs_recipe"] <= high
    recipe, default, narrow, rerun = report["rows"]
    assert recipe["items"] == recipe["calls"] == recipe["scored"] == 3
    for row in (default, narrow):
        assert row["items"] == row["calls"] == row["server_requests"] == 30 and row["failures"] == 0
    assert rerun["calls"] == rerun["server_requests"] == 0 and rerun["cache_hits"] == 30
    assert (
        report["ratio_default_vs_recipe"] > 0
        and 1 < report["server_peak_in_flight"] <= judge_bench.DEFAULT_MAX_IN_FLIGHT
    )
    assert json.loads(json.dumps(report))["items"] == 30


def test_offline_judge_bench_tiny_run(tmp_path, capsys):
    """The offline-judge calibration benchmark on 3 synthetic clips and the real one: table, JSON, --check."""
    from avdag_tests.bench import bench_offline_judge as offline_bench

    out = tmp_path / "offline.json"
    assert offline_bench.main(["--clips", "3", "--check", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for needle in ("safety_analysis", "| new: para", "| old: para", "met", "offline:all-minilm-l6-v2:v2", "other*"):
        assert needle in text
    report = json.loads(out.read_text())
    assert report["clips"] == 4 and report["new"]["passed"]
    assert [row["field"] for row in report["new"]["fields"]] == [row["field"] for row in report["old"]["fields"]]
    assert {row["verdict"] for row in report["new"]["fields"]} <= {"met", "skipped"}
