"""The demo evaluates on enough clips for its comparison to mean something; the wheel check's tiny demo is unchanged."""

from avdag.core.ingest.splits import EVAL_FRACTION, split_for
from avdag.core.reporting.statistics import MIN_CLIPS_FOR_CONFIDENCE
from avdag.demo.sample_batch import DEMO_EVAL_FRACTION, demo_eval_fraction
from avdag.demo.synthetic_clips import plan_clip
from avdag.settings import DEFAULT_DEMO_CLIPS


def _demo_ids(n_synthetic: int) -> list[str]:
    """The ids `avdag demo --clips n` writes: its synthetic clips (seed 0) and the real one."""
    return [plan_clip(0, i)[0] for i in range(n_synthetic)] + ["solidWhiteRight"]


def _eval_count(ids: list[str], fraction: float | None) -> int:
    return sum(split_for(c, fraction or EVAL_FRACTION) == "eval" for c in ids)


def test_the_default_demo_holds_out_at_least_the_confidence_floor():
    ids = _demo_ids(DEFAULT_DEMO_CLIPS)
    assert _eval_count(ids, None) < MIN_CLIPS_FOR_CONFIDENCE  # at the platform's 10%: 8 clips
    assert _eval_count(ids, demo_eval_fraction(DEFAULT_DEMO_CLIPS)) >= MIN_CLIPS_FOR_CONFIDENCE


def test_the_wheel_checks_four_clip_demo_keeps_the_platform_split():
    assert demo_eval_fraction(4) is None
    assert _eval_count(_demo_ids(4), demo_eval_fraction(4)) == _eval_count(_demo_ids(4), None)


def test_a_larger_demo_fraction_only_moves_clips_from_train_to_eval():
    ids = _demo_ids(DEFAULT_DEMO_CLIPS)
    assert {c for c in ids if split_for(c) == "eval"} <= {c for c in ids if split_for(c, DEMO_EVAL_FRACTION) == "eval"}


def test_the_demo_runs_its_batch_at_the_demo_fraction(monkeypatch, tmp_path):
    import avdag.demo.sample_batch as sample_batch
    from avdag import cli

    monkeypatch.setenv("AVDAG_LANDING_URL", str(tmp_path))
    written = []
    monkeypatch.setattr(
        sample_batch,
        "write_sample_batch",
        lambda root, batch, n, n_unlabelled: written.append(n_unlabelled) or [f"c{i}" for i in range(n + 1)],
    )
    runs = []
    monkeypatch.setattr(cli, "run_batch", lambda batch, eval_fraction=None: runs.append((batch, eval_fraction)) or 0)
    assert cli.demo(DEFAULT_DEMO_CLIPS) == 0 and cli.demo(4) == 0
    assert runs == [(cli.DEMO_BATCH, DEMO_EVAL_FRACTION), (cli.DEMO_BATCH, None)]
    assert written == [DEFAULT_DEMO_CLIPS // 10, 0]  # the wheel check's 4-clip demo lands no unlabelled clip


def test_unlabelled_demo_clips_land_without_labels_and_other_ids(tmp_path):
    from avdag.core.ingest.landing import LABEL_SUFFIX, VIDEO_SUFFIX
    from avdag.demo.sample_batch import write_sample_batch

    ids = write_sample_batch(tmp_path, "b", 2, n_unlabelled=2)
    assert len(ids) == len(set(ids)) == 5
    labelled = {p.name.removesuffix(LABEL_SUFFIX) for p in (tmp_path / "b" / "metas").iterdir()}
    videos = {p.name.removesuffix(VIDEO_SUFFIX) for p in (tmp_path / "b" / "videos").iterdir()}
    assert videos == set(ids) and labelled == set(ids[:2]) | {"solidWhiteRight"}
