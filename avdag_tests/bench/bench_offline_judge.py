"""Benchmark: does the offline judge score a right answer above a wrong one, per field? New (v2) vs old (v1).

    python -m avdag_tests.bench.bench_offline_judge               # 40 synthetic clips + the real one
    python -m avdag_tests.bench.bench_offline_judge --clips 100
    python -m avdag_tests.bench.bench_offline_judge --check       # exit 1 if the new judge misses a field
    python -m avdag_tests.bench.bench_offline_judge --json out.json
    python -m avdag_tests.bench.bench_offline_judge --quick       # 20 synthetic clips (`make bench BENCH_ARGS=--quick`)

Labels: `--clips` synthetic clips of the demo's generator (seed `--seed`) plus the real clip's label
shipped with avdag. Every clip is a calibration clip (`calibration_items` with the sample = all), so
per field the judge scores each human answer against a paraphrase of itself (right), the field's
most common answer where it differs (a memorised template: wrong) and another clip's different
answer (wrong). A field is met when paraphrase mean - max(constant, other) >= MIN_GAP.

new = OfflineEmbeddingJudge, mode "reference" (v2), its pool the human answers of all these clips;
old = mode "similarity" (v1: MiniLM cosine thresholds, no pool). Real MiniLM, CPU, offline.

"other*" (new judge, printed, not checked): the other-clip answers judged again with every copy of
that answer taken out of the pool, i.e. a wrong answer the references have never seen. It shows
what the judge does without the help of recognising a copied answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

import pandas as pd

from avdag.core.captioning.prompts import load_prompt_set
from avdag.core.judging.calibration import (
    MIN_GAP,
    calibration_items,
    constant_answers,
    summarize_calibration,
    table_records,
)
from avdag.core.judging.offline_judge import OfflineEmbeddingJudge, free_text_key, reference_answers_of
from avdag.demo.sample_data import REAL_CLIP_DIR, REAL_CLIP_ID
from avdag.demo.synthetic_clips import plan_clip

DEFAULT_CLIPS = 40


def bench_labels(clips: int, seed: int = 0) -> dict[str, dict]:
    """`clips` synthetic labels of the demo generator and the real clip's label, by clip id."""
    labels = {clip_id: label for clip_id, _, label in (plan_clip(seed, index) for index in range(clips))}
    labels[REAL_CLIP_ID] = json.loads((REAL_CLIP_DIR / f"{REAL_CLIP_ID}.label.json").read_text(encoding="utf-8"))
    return labels


def novel_other_means(labels: dict[str, dict], items: list, new: OfflineEmbeddingJudge) -> dict[str, float]:
    """Free-text field -> mean score of its other-clip answers, each judged with its copies out of the pool."""
    pool = reference_answers_of(labels.values())
    groups: dict[tuple[str, str], list] = {}
    for c in items:
        if c.kind == "other" and c.item.field in pool:
            groups.setdefault((c.item.field, free_text_key(c.item.model_answer)), []).append(c.item)
    scores: dict[str, list[int]] = {}
    for (field, key), group in sorted(groups.items()):
        judge = OfflineEmbeddingJudge(reference_answers={field: [t for t in pool[field] if free_text_key(t) != key]})
        judge._model = new.model  # noqa: SLF001
        scores.setdefault(field, []).extend(v.score for v in judge.judge(group))
    return {field: sum(s) / len(s) for field, s in scores.items()}


def run(clips: int = DEFAULT_CLIPS, seed: int = 0, min_gap: float = MIN_GAP) -> dict:
    """Both judges over the same calibration items; per-field tables and pass/fail as JSON-able dicts."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    labels = bench_labels(clips, seed)
    questions = load_prompt_set().questions
    items = calibration_items(labels, questions, sample=len(labels), seed=seed)
    shares = {field: c.share for field, c in constant_answers(labels, questions).items()}
    new = OfflineEmbeddingJudge().with_reference_labels(labels.values())
    old = OfflineEmbeddingJudge(mode="similarity")
    old._model = new.model  # one MiniLM load for both  # noqa: SLF001
    report = {"clips": len(labels), "items": len(items), "min_gap": min_gap}
    for name, judge in (("new", new), ("old", old)):
        started = time.perf_counter()
        verdicts = judge.judge([c.item for c in items])
        seconds = time.perf_counter() - started
        summary = summarize_calibration(items, verdicts, constant_shares=shares, min_gap=min_gap)
        report[name] = {
            "judge_id": judge.judge_id,
            "seconds": round(seconds, 2),
            "passed": summary.passed,
            "reason": summary.reason,
            "means": {
                "paraphrase": summary.paraphrase_mean,
                "constant": summary.constant_mean,
                "other": summary.other_mean,
            },
            "fields": table_records(summary.by_field),
        }
    novel = novel_other_means(labels, items, new)
    for row in report["new"]["fields"]:
        row["other_novel_mean"] = round(novel[row["field"]], 3) if row["field"] in novel else None
    return report


def _cell(value) -> str:
    return "  -  " if value is None else f"{value:5.2f}"


def format_report(report: dict) -> str:
    lines = [
        f"Offline judge calibration: {report['clips']} clips ({report['clips'] - 1} synthetic + real), "
        f"{report['items']} items per judge; a field is met when paraphrase - max(constant, other) >= "
        f"{report['min_gap']}",
        "",
        f"{'field':32} {'| new: para':>10} {'const':>5} {'other':>5} {'gap':>5} {'':7}"
        f"{'| old: para':>10} {'const':>5} {'other':>5} {'gap':>5} {'':7}{'| p(const)':>9} {'| other*':>8}",
    ]
    old = {row["field"]: row for row in report["old"]["fields"]}
    for row in report["new"]["fields"]:
        before = old[row["field"]]
        cells = []
        for r in (row, before):
            cells.append(
                f"| {_cell(r['paraphrase_mean']):>8} {_cell(r['constant_mean'])} {_cell(r['other_mean'])} "
                f"{_cell(r['gap'])} {r['verdict']:7}"
            )
        tail = f"| {_cell(row['constant_share']):>7} | {_cell(row['other_novel_mean'])}"
        lines.append(f"{row['field']:32} {cells[0]}{cells[1]}{tail}")
    for name in ("new", "old"):
        side = report[name]
        means = side["means"]
        lines.append(
            f"{name} ({side['judge_id']}, {side['seconds']} s): paraphrase {means['paraphrase']:.2f}, constant "
            f"{means['constant']:.2f}, other {means['other']:.2f}: {'PASSED' if side['passed'] else 'FAILED'}: "
            f"{side['reason']}"
        )
    lines.append("p(const): share of clips whose answer is the constant (constant items are asked on the others)")
    lines.append("other*: new judge, other-clip answers with every copy of the answer out of the pool (not checked)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--clips", type=int, default=None, help=f"synthetic clips, default {DEFAULT_CLIPS} (+ the real one)"
    )
    parser.add_argument("--quick", action="store_true", help="20 synthetic clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-gap", type=float, default=MIN_GAP)
    parser.add_argument("--check", action="store_true", help="exit 1 when the new judge misses a field")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    report = run(args.clips or (20 if args.quick else DEFAULT_CLIPS), args.seed, args.min_gap)
    print(format_report(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
    return 1 if args.check and not report["new"]["passed"] else 0


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    sys.exit(main())
