"""batch_review and eval_review through Dagster on the tiny model, and the stored page in a real browser.

The graph is materialized once for a small batch (two synthetic clips and the real one); the review's
metadata, its stored page, JSON and CSV are checked against the score assets, then Debian's chromium
(through Playwright, as the UI test drives it) opens the stored page from its file and checks that
the frames decode, that a filter narrows the list as `filter_rows` does, and that the page's exports
are the stored ones.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from avdag.core.common.database import sqlite_url
from avdag.core.common.labels import FIELDS
from avdag.core.common.state_store import StateStore
from avdag.core.reporting.review import EVAL_REVIEW, filter_rows, load_review, review_keys
from avdag.demo.sample_batch import REAL_CLIP_ID, write_sample_batch
from avdag.resources.registry import ClipRegistryResource
from avdag_tests.support.browser import browser_missing, chromium, sync_api
from avdag_tests.support.pipeline_helpers import materialize_batch, small_resources

BATCH = "batch-review"


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("review")
    landing = root / "landing"
    ids = write_sample_batch(landing, BATCH, n_synthetic=2, seed=5)  # clip ids no other test uses
    resources = small_resources(
        str(landing), clip_registry=ClipRegistryResource(db_url=sqlite_url(root / "registry.sqlite"))
    )
    with dg.instance_for_test() as instance:
        result = materialize_batch(instance, BATCH, resources)
        metadata = {
            name: instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization.metadata
            for name in ("batch_review", "eval_review")
        }
    outputs = {
        name: result.output_for_node(name)
        for name in ("clip_splits", "baseline_judge_scores", "finetuned_judge_scores", "finetuned_captions")
    }
    return resources["state"].store(), metadata, outputs, ids


def _stored_csv(store: StateStore, name: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(store.read_bytes(review_keys(name)["csv"]).decode())))


def _scores(outputs: dict) -> pd.DataFrame:
    return pd.concat([outputs["baseline_judge_scores"], outputs["finetuned_judge_scores"]], ignore_index=True)


def test_batch_review_metadata_links_the_stored_page_and_exports(reviewed):
    store, metadata, outputs, ids = reviewed
    meta = metadata["batch_review"]
    assert meta["clips"].value == len(ids) == 3
    eval_ids = set(outputs["clip_splits"].query("split == 'eval'")["clip_id"])
    assert meta["judged_clips"].value == len(eval_ids) >= 1
    assert meta["clips_without_frames"].value == 0
    keys = review_keys(BATCH)
    for kind in ("page", "json", "csv"):
        path = meta[kind].value
        assert path == store.uri(keys["html" if kind == "page" else kind]) and Path(path).is_file()
    assert "judged of 3 clips" in meta["worst_clips"].value
    assert meta["open_locally"].value == f"avdag review {BATCH} --open"
    title, rows = load_review(store, BATCH)
    assert title.endswith(BATCH) and {r["clip_id"] for r in rows} == set(ids)
    assert all(len(r["frames"]) == 4 and r["frames"][0].startswith("data:image/jpeg;base64,") for r in rows)


def test_stored_csv_holds_every_stored_score(reviewed):
    store, _, outputs, ids = reviewed
    records = _stored_csv(store, BATCH)
    assert len(records) == len(ids) * len(FIELDS)
    by_key = {(r["clip_id"], r["field"]): r for r in records}
    scores = _scores(outputs)
    assert len(scores) > 0
    for row in scores.itertuples():
        line = by_key[(row.clip_id, row.field)]
        expected = "" if pd.isna(row.score) else str(int(row.score))
        assert line[f"{row.caption_source}_score"] == expected, (row.clip_id, row.field, row.caption_source)
        assert line["human_answer"] == row.human_answer


def test_eval_review_holds_the_eval_clips_of_the_checkpoint_in_service(reviewed):
    store, metadata, outputs, _ = reviewed
    eval_ids = set(outputs["clip_splits"].query("split == 'eval'")["clip_id"])
    assert metadata["eval_review"]["clips"].value == len(eval_ids)
    _, rows = load_review(store, EVAL_REVIEW)
    assert {r["clip_id"] for r in rows} == eval_ids
    weights = set(outputs["finetuned_captions"]["model_hash"])
    assert all(r["sources"]["finetuned"]["model_hash"] in weights for r in rows)


def test_cli_review_writes_the_page_locally_and_checks_the_filter(reviewed, tmp_path, monkeypatch, capsys):
    from avdag.cli import HINTS, main

    store, _, _, _ = reviewed
    monkeypatch.setenv("AVDAG_STATE_URL", store.url)
    out = tmp_path / "page.html"
    assert main(["review", BATCH, f"clip_id={REAL_CLIP_ID}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "1 of 3 clips match" in printed
    assert f"clip_id={REAL_CLIP_ID}" in out.read_text()
    hint = next(h for h in HINTS if h.startswith("avdag review"))  # printed by the demo
    assert main([*shlex.split(hint)[1:], "--out", str(tmp_path / "eval.html")]) == 0
    assert (tmp_path / "eval.html").is_file() and "clips match the filter" in capsys.readouterr().out
    assert main(["review", BATCH, "colour=blue", "--out", str(out)]) == 2
    assert "unknown field 'colour'" in capsys.readouterr().err
    assert main(["review", "no-such-batch", "--out", str(out)]) == 2
    assert "batch_review" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the page in a browser


@pytest.fixture(scope="module")
def browser():
    if missing := browser_missing():
        pytest.fail(missing, pytrace=False)
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, reviewed):
    store, metadata, _, _ = reviewed
    context = browser.new_context(accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(Path(metadata["batch_review"]["page"].value).as_uri())
    try:
        yield page
        assert errors == [], f"script errors on the page: {errors}"
    finally:
        context.close()


def test_frames_render(page, reviewed):
    images = page.locator("img.frame")
    assert images.count() == 3 * 4
    for index in range(images.count()):
        size = images.nth(index).evaluate("img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])")
        assert size[0] > 0 and size[1] > 0, f"frame {index} did not decode: {size}"


def test_a_filter_narrows_the_list_as_filter_rows_does(page, reviewed):
    store, _, _, _ = reviewed
    _, rows = load_review(store, BATCH)
    real = next(r for r in rows if r["clip_id"] == REAL_CLIP_ID)
    assert page.locator("section.clip").count() == 3
    query = f'weather="{real["catalog"]["weather"]}" -clip_id~synthetic'
    expected = {r["clip_id"] for r in filter_rows(rows, query)}
    assert REAL_CLIP_ID in expected and len(expected) < 3
    page.fill("#query", query)
    sync_api.expect(page.locator("section.clip")).to_have_count(len(expected))
    shown = set(page.locator("section.clip").evaluate_all("nodes => nodes.map(n => n.dataset.clipId)"))
    assert shown == expected
    assert page.inner_text("#count") == f"{len(expected)} of 3 clips"
    page.fill("#query", "colour=blue")
    assert "unknown field" in page.inner_text("#query-error")
    page.fill("#query", "")
    sync_api.expect(page.locator("section.clip")).to_have_count(3)


def test_exports_match_the_stored_files_and_scores(page, reviewed):
    store, _, outputs, _ = reviewed
    with page.expect_download() as download:
        page.click("#export-csv")
    exported = Path(download.value.path()).read_bytes()
    assert exported == store.read_bytes(review_keys(BATCH)["csv"])
    by_key = {(r["clip_id"], r["field"]): r for r in csv.DictReader(io.StringIO(exported.decode()))}
    for row in _scores(outputs).itertuples():
        expected = "" if pd.isna(row.score) else str(int(row.score))
        assert by_key[(row.clip_id, row.field)][f"{row.caption_source}_score"] == expected
    with page.expect_download() as download:
        page.click("#export-json")
    exported_rows = json.loads(Path(download.value.path()).read_text())["rows"]
    stored_rows = json.loads(store.read_bytes(review_keys(BATCH)["json"]))["rows"]
    key = lambda r: (r["batch"], r["clip_id"])  # noqa: E731
    assert sorted(exported_rows, key=key) == sorted(stored_rows, key=key)
    page.fill("#query", f"clip_id={REAL_CLIP_ID}")
    sync_api.expect(page.locator("section.clip")).to_have_count(1)
    with page.expect_download() as download:
        page.click("#export-csv")
    lines = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert {line["clip_id"] for line in lines} == {REAL_CLIP_ID} and len(lines) == len(FIELDS)
