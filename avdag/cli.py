"""`avdag demo | run | ui`: the command-line face of the same Dagster definitions the UI shows."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import webbrowser
from pathlib import Path

from avdag.core.common.atomic import write_bytes_atomic
from avdag.core.common.package_files import instance_config_file, workspace_file
from avdag.core.common.state_store import StateStore, storage_options
from avdag.settings import Settings, SettingsError

DEMO_BATCH = "sample-0001"
# Printed after the demo: each must work as typed into bash (a test runs them through `bash -c`).
HINTS = (
    'avdag search weather="Light rain" night',
    "avdag search rainy night with pedestrians",
    "avdag search someone walking across the street",
    "avdag review eval worse",
)


def _state() -> tuple[StateStore, Path]:
    """The state store (AVDAG_STATE_URL) and this machine's scratch for local copies, without Dagster."""
    settings = Settings.from_env()
    store = StateStore(settings.state_url, storage_options(settings.state_url, settings.s3_endpoint_url))
    return store, settings.home / "scratch"


def _prepare_environment() -> None:
    """Point Dagster at `$AVDAG_HOME/dagster` with the instance config avdag ships (run queue limits)."""
    dagster_home = Settings.from_env().dagster_home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    shipped = instance_config_file().read_text(encoding="utf-8")
    if not config.exists():
        write_bytes_atomic(config, shipped.encode("utf-8"))
    elif "avdag/stage" not in config.read_text(encoding="utf-8"):
        print(
            f"note: {config} lacks avdag's run queue limits (one training run at a time); see {instance_config_file()}"
        )


def run_batch(batch: str, eval_fraction: float | None = None) -> int:
    """Everything for `batch`, in the persistent instance, as the sensors would chain it; print the results.

    1. the clip batch run (ingest, baseline captions and scores; fine-tuned ones if a checkpoint is in service),
       its split at `eval_fraction` when given (the demo's), else at clip_splits' default,
    2. the training run (candidate, evaluation on the eval split, promotion if not worse),
    3. fine-tuned captions and scores for every batch not yet scored with the checkpoint in service,
    4. the reporting run (comparison chart, catalog).
    Runs are tagged like the sensor's, so a sensor switched on later launches only what is new.
    """
    _prepare_environment()
    import dagster as dg

    from avdag.definitions import build_resources, defs
    from avdag.defs.ingest.landing_sensor import FINGERPRINT_TAG
    from avdag.defs.pipeline.jobs import FINETUNED_ASSETS
    from avdag.defs.pipeline.partitions import clip_batches
    from avdag.defs.training.promotion import refusal_in_run
    from avdag.defs.training.promotion_sensor import batches_behind

    instance = dg.DagsterInstance.get()
    if not instance.has_dynamic_partition(clip_batches.name, batch):
        instance.add_dynamic_partitions(clip_batches.name, [batch])
    fingerprint = build_resources()["landing_zone"].zone().batch_fingerprint(batch)
    started = time.perf_counter()

    def run(title: str, job: str, **kwargs) -> bool:
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False, **kwargs)
        refusal = None if result.success else refusal_in_run(instance, result.run_id)
        outcome = "success" if result.success else "candidate refused by the gate" if refusal else "FAILED"
        print(f"\n{title}: run {result.run_id} {outcome}")
        _print_step_times(instance, result.run_id)
        if refusal:
            print(f"  {refusal}; the checkpoint in service stays")
        return result.success or refusal is not None

    split_config = {"ops": {"clip_splits": {"config": {"eval_fraction": eval_fraction}}}} if eval_fraction else None
    ok = run(
        f"clip batch {batch}",
        "clip_batch_pipeline",
        partition_key=batch,
        tags={FINGERPRINT_TAG: fingerprint},
        run_config=split_config,
    )
    ok = ok and run("training", "training_pipeline")
    if ok:
        checkpoint_id, _, behind = batches_behind(instance)
        for other in behind:
            keys = [dg.AssetKey(name) for name in FINETUNED_ASSETS]
            ok = ok and run(
                f"fine-tuned captions of {other} ({checkpoint_id})",
                "clip_batch_pipeline",
                partition_key=other,
                asset_selection=keys,
            )
    ok = ok and run("reports", "reporting_pipeline")
    print(f"\n{'done' if ok else 'FAILED'} in {time.perf_counter() - started:.0f}s")
    if not ok:
        return 1
    _print_report()
    return 0


def _print_step_times(instance, run_id: str) -> None:
    for stat in sorted(instance.get_run_step_stats(run_id), key=lambda s: s.start_time or 0):
        status = stat.status.value if stat.status else "?"
        took = f"{stat.end_time - stat.start_time:7.1f}s" if stat.start_time and stat.end_time else "      -"
        print(f"  {stat.step_key:<50} {status:<8} {took}")


def _print_report() -> None:
    from avdag.core.reporting.charts import format_difference
    from avdag.core.reporting.published import latest_report
    from avdag.core.reporting.statistics import STRICT_MEAN_LABEL

    store, _ = _state()
    files = latest_report(store)
    report = store.read_json(files.json)
    print(f"\nJudge scores on {report['eval_clips']} eval clip(s), judge {', '.join(report['judge_ids'])}")
    if report.get("small_sample_warning"):
        print(f"WARNING: {report['small_sample_warning']}")
    print(
        f"{report.get('means', STRICT_MEAN_LABEL)} per question; diff = fine-tuned - baseline, paired by clip, "
        f"with its {report.get('interval', '95% interval')}"
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
    if report.get("judge_failures_excluded"):
        print(f"left out of the pairing: {report['judge_failures_excluded']} clip-question items the judge failed on")
    constant = report.get("constant_answer")
    if constant:
        print(
            f"\nagainst the constant answer (the commonest label of {constant['train_clips']} train clips, "
            "scored by the same judge)"
        )
        print(f"{'question':<34}{'constant':>10}{'finetuned':>11}   fine-tuned - constant [95% interval]")
        for row in constant["table"]:
            diff = {
                "diff": row["finetuned_diff"],
                "diff_low": row["finetuned_diff_low"],
                "diff_high": row["finetuned_diff_high"],
                "significant": row["finetuned_better"] or row["finetuned_worse"],
            }
            print(
                f"{row['field']:<34}{_num(row['constant_mean_score_strict']):>10}"
                f"{_num(row['finetuned_mean_score_strict']):>11}   {format_difference(diff)}"
            )
        print(
            f"fine-tuned significantly better than the constant on {constant['questions_finetuned_better']}, "
            f"worse on {constant['questions_finetuned_worse']} of {len(constant['table'])} questions"
        )
    print(f"\n{'exact accuracy':<34}{'baseline':>10}{'finetuned':>11}   always the majority answer")
    for row in report["multiple_choice_accuracy"]:
        print(
            f"{row['field']:<34}{_num(row['baseline_accuracy']):>10}{_num(row['finetuned_accuracy']):>11}   "
            f"{_num(row['majority_accuracy'])} ({json.dumps(row['majority_answer'])}, n={row['n']})"
        )
    if report.get("caption_quality"):
        print(f"\n{'caption quality':<34}{'clips':>7}{'token cap':>11}{'empty':>7}{'looping':>9}{'> 3x label':>12}")
        for row in report["caption_quality"]:
            print(
                f"{row['source']:<34}{row['clips']:>7}{row['hit_token_cap']:>11}{row['empty']:>7}"
                f"{row['repetitive']:>9}{row['longer_than_label']:>12}"
            )
    print(f"\nchart: {store.uri(files.png)}")
    print(f"table: {store.uri(files.json)}")
    print("\nsearch and review the clips (each line works pasted into a shell; more in the README):")
    command = _avdag_command()
    for hint in HINTS:
        print(f"  {command}{hint.removeprefix('avdag')}")


def _avdag_command() -> str:
    """This avdag as the user's shell reaches it: `avdag` when PATH finds this one, else its path."""
    mine = Path(sys.executable).parent / "avdag"
    found = shutil.which("avdag")
    if found and Path(found).resolve() == mine.resolve():
        return "avdag"
    try:
        return shlex.quote(str(mine.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(mine))


def _num(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.2f}"


def demo(n_synthetic: int) -> int:
    """Generate the sample batch, put it in the landing zone (a folder or s3://) and run the pipeline for it."""
    from avdag.definitions import build_resources
    from avdag.demo.sample_batch import demo_eval_fraction, demo_unlabelled_clips, write_sample_batch

    settings = Settings.from_env()
    zone = build_resources(settings)["landing_zone"].zone()
    started = time.perf_counter()
    unlabelled = demo_unlabelled_clips(n_synthetic)
    if zone.is_local:
        ids = write_sample_batch(Path(zone.root), DEMO_BATCH, n_synthetic, n_unlabelled=unlabelled)
    else:
        staging = settings.home / "scratch" / "sample-batch"
        ids = write_sample_batch(staging, DEMO_BATCH, n_synthetic, n_unlabelled=unlabelled)
        zone.upload_batch(staging / DEMO_BATCH, DEMO_BATCH)
    print(
        f"sample batch {DEMO_BATCH}: {len(ids)} clips ({unlabelled} without labels) in {zone.url}/{DEMO_BATCH} "
        f"({time.perf_counter() - started:.0f}s)"
    )
    eval_fraction = demo_eval_fraction(n_synthetic)
    if eval_fraction:
        print(f"the demo batch holds out {eval_fraction:.0%} of its clips for evaluation (the platform default: 10%)")
    return run_batch(DEMO_BATCH, eval_fraction)


def search(query: list[str], limit: int, where: str | None, exact: bool = False) -> int:
    """Query the clip catalog: each argument is one term (the shell has already removed its quotes);
    words no field or flag covers rank the matches by meaning, unless `exact` (see `avdag search --help`)."""
    from avdag.core.reporting.catalog import CatalogQueryError, fetch_catalog
    from avdag.core.reporting.catalog import search as run_search
    from avdag.core.reporting.meaning import meaning_search

    try:
        run = run_search if exact else meaning_search
        rows = run(fetch_catalog(*_state()), query, limit=limit, where_sql=where)
    except (CatalogQueryError, FileNotFoundError) as exc:
        print(f"avdag search: {exc}", file=sys.stderr)
        return 2
    if rows.empty:
        print("no matching clips")
    else:
        print(rows.to_markdown(index=False))
        print(f"\n{len(rows)} clip(s){' (limit reached)' if len(rows) == limit else ''}")
    return 0


def review(name: str, query: list[str], out: str | None, open_browser: bool) -> int:
    """Write a stored review (a batch's, or `eval`) as a local page with `query` in its filter box."""
    from avdag.core.reporting.catalog import CatalogQueryError, query_terms
    from avdag.core.reporting.review import filter_rows, load_review
    from avdag.core.reporting.review_page import review_page

    store, _ = _state()
    try:
        title, rows = load_review(store, name)
        matching = filter_rows(rows, query)
    except (CatalogQueryError, FileNotFoundError) as exc:
        print(f"avdag review: {exc}", file=sys.stderr)
        return 2
    text = " ".join(shlex.quote(term) for term in query_terms(query)) if query else ""
    path = Path(out) if out else Settings.from_env().home / "reviews" / f"{name}.html"
    write_bytes_atomic(path, review_page(rows, title, query=text).encode("utf-8"))
    if query:
        print(f"{len(matching)} of {len(rows)} clips match the filter {text}")
    print(path.resolve())
    if open_browser and not webbrowser.open(path.resolve().as_uri()):
        print("avdag review: no browser found; open the file above", file=sys.stderr)
    return 0


def ui(port: int) -> int:
    """Open the Dagster UI on the same instance the demo wrote to."""
    _prepare_environment()
    workspace = workspace_file()
    return subprocess.call([sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-p", str(port)])


def lineage(clip_id: str, question: str, source: str, as_json: bool, batch: str | None = None) -> int:
    """Print where one score came from, each link checked against the score row.

    Exit 2 with a clear message when there is no such score (or the clip id needs --batch); a
    chain that differs from what the score recorded is printed with a warning on stderr (exit 0).
    """
    from avdag.core.reporting.lineage import LineageError, format_lineage, score_lineage

    try:
        chain = score_lineage(*_state(), clip_id, question, source, batch)
    except LineageError as error:
        print(f"avdag lineage: {error}", file=sys.stderr)
        return 2
    print(json.dumps(chain.sections, indent=2, default=str) if as_json else format_lineage(chain))
    if chain.mismatched:
        print(f"avdag lineage: differs from what the score recorded: {', '.join(chain.mismatched)}", file=sys.stderr)
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
        description="Each argument is one term; terms are ANDed: field=value, field~text, field>n, flags "
        "(pedestrians, night, interesting, traffic_light, violation, labelled, unlabelled; prefix - to negate), "
        "everyday words (rainy, foggy, dark, people, highway, ...), or free words, which rank the matches by "
        "meaning (sentence embeddings of labels and captions). "
        'Examples: avdag search weather="Light rain" night -interesting; avdag search rainy night with pedestrians',
    )
    p_search.add_argument("query", nargs="*")
    p_search.add_argument(
        "--exact", action="store_true", help="free words are substrings of the answer text, no ranking by meaning"
    )
    p_search.add_argument("--limit", type=int, default=20)
    p_search.add_argument("--where", help="raw SQL WHERE fragment (trusted input), ANDed with the query")
    p_lineage = sub.add_parser("lineage", help="the chain behind one score, from upload to judge")
    p_lineage.add_argument("clip_id")
    p_lineage.add_argument("question", help="a field name (e.g. weather) or words of the question")
    p_lineage.add_argument("--source", choices=["baseline", "finetuned"], default="finetuned")
    p_lineage.add_argument("--batch", help="the batch of the score, when the clip id was scored in several")
    p_lineage.add_argument("--json", action="store_true", help="print the chain as JSON")
    p_review = sub.add_parser(
        "review",
        help="a review page: each clip's frames, label, both answers and the judge, with filters",
        description="Writes the stored review of a batch (or `eval`: the eval split of the checkpoint in service) "
        "as a local HTML page; filter terms as for `avdag search`, plus worse, disagree, parse_failed, "
        "min_score<3. Example: avdag review eval worse night",
    )
    p_review.add_argument("name", help="a batch, or `eval`")
    p_review.add_argument("query", nargs="*")
    p_review.add_argument("--out", help="where to write the page (default $AVDAG_HOME/reviews/<name>.html)")
    p_review.add_argument("--open", action="store_true", help="open the page in a browser, if there is one")
    p_ui = sub.add_parser("ui", help="start the Dagster UI on $AVDAG_HOME")
    p_ui.add_argument("--port", type=int, default=3000)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("search", "review"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("search", "review"):  # '-flag' negates a search term; it is not an option
        unknown = [term for term in extra if term.startswith("--")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.query += extra
    if args.command == "demo":
        return demo(Settings.from_env().demo_clips if args.clips is None else args.clips)
    if args.command == "run":
        return run_batch(args.batch)
    if args.command == "search":
        return search(args.query, args.limit, args.where, args.exact)
    if args.command == "review":
        return review(args.name, args.query, args.out, args.open)
    if args.command == "lineage":
        return lineage(args.clip_id, args.question, args.source, args.json, args.batch)
    return ui(args.port)


if __name__ == "__main__":
    sys.exit(main())
