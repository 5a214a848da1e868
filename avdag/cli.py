"""`avdag demo | run | ui`: the command-line face of the same Dagster definitions the UI shows."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from avdag.core.common.package_files import workspace_file
from avdag.settings import Settings, SettingsError, avdag_home

DEMO_BATCH = "sample-0001"


def _prepare_environment() -> None:
    dagster_home = Settings.from_env().dagster_home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")


def run_batch(batch: str) -> int:
    """Materialize every asset for `batch` into the persistent instance; print the results."""
    _prepare_environment()
    import dagster as dg

    from avdag.definitions import defs
    from avdag.defs.pipeline.partitions import clip_batches

    instance = dg.DagsterInstance.get()
    if not instance.has_dynamic_partition(clip_batches.name, batch):
        instance.add_dynamic_partitions(clip_batches.name, [batch])
    started = time.perf_counter()
    result = defs.resolve_job_def("batch_pipeline").execute_in_process(
        partition_key=batch, instance=instance, raise_on_error=False
    )
    print(f"\nrun {result.run_id}: {'success' if result.success else 'FAILED'} in {time.perf_counter() - started:.0f}s")
    _print_step_times(instance, result.run_id)
    if not result.success:
        return 1
    _print_report()
    return 0


def _print_step_times(instance, run_id: str) -> None:
    for stat in sorted(instance.get_run_step_stats(run_id), key=lambda s: s.start_time or 0):
        took = (stat.end_time or 0) - (stat.start_time or 0)
        print(f"  {stat.step_key:<40} {stat.status.value if stat.status else '?':<8} {took:7.1f}s")


def _print_report() -> None:
    from avdag.core.reporting.charts import format_difference

    report_path = avdag_home() / "reports" / "comparison.json"
    report = json.loads(report_path.read_text())
    print(f"\nJudge scores on {report['eval_clips']} eval clip(s), judge {', '.join(report['judge_ids'])}")
    print(
        "mean per question (a missing answer counts as 1); diff = fine-tuned - baseline, paired by clip, "
        "with its bootstrap 95% interval"
    )
    print(f"{'question':<34}{'baseline':>10}{'finetuned':>11}   {'diff [95% interval]':<28}{'scored b/f':>12}")
    for row in report["table"]:
        scored = f"{row['baseline_scored_n']}/{row['finetuned_scored_n']} of {row['n']}"
        print(
            f"{row['field']:<34}{_num(row['baseline_mean_score_strict']):>10}"
            f"{_num(row['finetuned_mean_score_strict']):>11}   {format_difference(row):<28}{scored:>12}"
        )
    print(
        f"fine-tuned significantly better on {report['questions_finetuned_better']}, worse on "
        f"{report['questions_finetuned_worse']}, n.s. on {len(report['questions_not_significant'])} "
        f"of {report['questions']} questions"
    )
    print(f"\n{'exact accuracy':<34}{'baseline':>10}{'finetuned':>11}   always the majority answer")
    for row in report["multiple_choice_accuracy"]:
        print(
            f"{row['field']:<34}{_num(row['baseline_accuracy']):>10}{_num(row['finetuned_accuracy']):>11}   "
            f"{_num(row['majority_accuracy'])} ({json.dumps(row['majority_answer'])}, n={row['n']})"
        )
    print(f"\nchart: {avdag_home() / 'reports' / 'comparison.png'}")
    print(f"table: {report_path}")
    print('search the clips: .venv/bin/avdag search weather="Light rain" night   (more in the README)')


def _num(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.2f}"


def demo(n_synthetic: int) -> int:
    """Generate the sample batch, put it in the landing zone (a folder or s3://) and run the pipeline for it."""
    from avdag.definitions import build_resources
    from avdag.demo.sample_batch import write_sample_batch

    settings = Settings.from_env()
    zone = build_resources(settings)["landing_zone"].zone()
    started = time.perf_counter()
    if zone.is_local:
        ids = write_sample_batch(Path(zone.root), DEMO_BATCH, n_synthetic)
    else:
        staging = settings.home / "scratch" / "sample-batch"
        ids = write_sample_batch(staging, DEMO_BATCH, n_synthetic)
        zone.upload_batch(staging / DEMO_BATCH, DEMO_BATCH)
    print(
        f"sample batch {DEMO_BATCH}: {len(ids)} clips in {zone.url}/{DEMO_BATCH} ({time.perf_counter() - started:.0f}s)"
    )
    return run_batch(DEMO_BATCH)


def search(query: list[str], limit: int, where: str | None) -> int:
    """Query the clip catalog with avdag's filter language (see `avdag search --help`)."""
    from avdag.core.reporting.catalog import CatalogQueryError
    from avdag.core.reporting.catalog import search as run_search
    from avdag.defs.reporting.clip_catalog import CATALOG_FILE

    try:
        rows = run_search(avdag_home() / CATALOG_FILE, " ".join(query), limit=limit, where_sql=where)
    except (CatalogQueryError, FileNotFoundError) as exc:
        print(f"avdag search: {exc}", file=sys.stderr)
        return 2
    if rows.empty:
        print("no matching clips")
    else:
        print(rows.to_markdown(index=False))
        print(f"\n{len(rows)} clip(s){' (limit reached)' if len(rows) == limit else ''}")
    return 0


def ui(port: int) -> int:
    """Open the Dagster UI on the same instance the demo wrote to."""
    _prepare_environment()
    workspace = workspace_file()
    return subprocess.call([sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-p", str(port)])


def lineage(clip_id: str, question: str, source: str, as_json: bool) -> int:
    """Print where one score came from; a clear message (exit 2) when there is no such score."""
    from avdag.core.reporting.lineage import LineageError, format_lineage, score_lineage

    try:
        chain = score_lineage(avdag_home() / "assets", clip_id, question, source)
    except LineageError as error:
        print(f"avdag lineage: {error}", file=sys.stderr)
        return 2
    print(json.dumps(chain.sections, indent=2, default=str) if as_json else format_lineage(chain))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _dispatch(argv)
    except SettingsError as error:
        print(f"avdag: {error}", file=sys.stderr)
        return 2


def _dispatch(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="avdag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="generate the sample batch and run every asset for it")
    p_demo.add_argument(
        "--clips",
        type=int,
        default=None,
        help="synthetic clips besides the real one (default $AVDAG_DEMO_CLIPS or 100)",
    )
    p_run = sub.add_parser("run", help="run every asset for a batch already in the landing zone")
    p_run.add_argument("batch")
    p_search = sub.add_parser(
        "search",
        help="find clips in the catalog",
        description="Terms are ANDed: field=value, field~text, field>n, flags (pedestrians, night, interesting, "
        "traffic_light, violation, labelled, unlabelled; prefix - to negate), or free words. "
        'Example: avdag search weather="Light rain" night -interesting',
    )
    p_search.add_argument("query", nargs="*")
    p_search.add_argument("--limit", type=int, default=20)
    p_search.add_argument("--where", help="raw SQL WHERE fragment (trusted input), ANDed with the query")
    p_lineage = sub.add_parser("lineage", help="the chain behind one score, from upload to judge")
    p_lineage.add_argument("clip_id")
    p_lineage.add_argument("question", help="a field name (e.g. weather) or words of the question")
    p_lineage.add_argument("--source", choices=["baseline", "finetuned"], default="finetuned")
    p_lineage.add_argument("--json", action="store_true", help="print the chain as JSON")
    p_ui = sub.add_parser("ui", help="start the Dagster UI on $AVDAG_HOME")
    p_ui.add_argument("--port", type=int, default=3000)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "search":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "search":  # '-flag' negates a search term; it is not an option
        unknown = [term for term in extra if term.startswith("--")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.query += extra
    if args.command == "demo":
        return demo(Settings.from_env().demo_clips if args.clips is None else args.clips)
    if args.command == "run":
        return run_batch(args.batch)
    if args.command == "search":
        return search(args.query, args.limit, args.where)
    if args.command == "lineage":
        return lineage(args.clip_id, args.question, args.source, args.json)
    return ui(args.port)


if __name__ == "__main__":
    sys.exit(main())
