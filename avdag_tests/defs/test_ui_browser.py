"""A real browser on the Dagster UI: materialize the graph for a small batch into a fresh demo-style
instance ($AVDAG_HOME/dagster), start dagster-webserver on it, and let Playwright drive Debian's
chromium through the score asset (its lineage and judge metadata) and the comparison chart."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from avdag.core.common.database import sqlite_url
from avdag.demo.sample_batch import write_sample_batch
from avdag.resources.registry import ClipRegistryResource
from avdag_tests.support.browser import browser_missing, chromium, sync_api
from avdag_tests.support.pipeline_helpers import materialize_batch, small_resources

BATCH = "batch-ui"
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 30_000  # per UI expectation; the code location loads in a few seconds
STARTUP_S = 90


def test_browser_is_installed():
    if missing := browser_missing():
        pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory, tiny_model_path):
    """A fresh $AVDAG_HOME laid out as the demo's (instance in $AVDAG_HOME/dagster), with the batch materialized."""
    if missing := browser_missing():
        pytest.fail(missing, pytrace=False)  # before the materialization: the UI tests cannot run without a browser
    home = tmp_path_factory.mktemp("ui_home")
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # Dagster's "Join the community" dialog would cover the page: mark it seen, as its Skip button does.
    (dagster_home / ".nux").mkdir()
    (dagster_home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    # The session's tiny model, so this home does not build it again (it would, were the layout to change).
    shutil.copytree(tiny_model_path, home / "models" / Path(tiny_model_path).name)
    landing = home / "landing"
    write_sample_batch(landing, BATCH, n_synthetic=2, seed=0)  # with the real clip: 2 train, 1 eval

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AVDAG_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(dagster_home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        with dg.DagsterInstance.get() as instance:  # persistent, in DAGSTER_HOME: the webserver reads it
            resources = small_resources(
                str(landing), clip_registry=ClipRegistryResource(db_url=sqlite_url(landing / "_registry.sqlite"))
            )
            materialize_batch(instance, BATCH, resources)
            metadata = {
                key: instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization.metadata
                for key in ("finetuned_judge_scores", "score_comparison")
            }
        yield home, metadata


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@pytest.fixture(scope="module")
def webserver(demo_home):
    """dagster-webserver on the demo instance, as `avdag ui` starts it (workspace.yaml); always stopped."""
    home, _ = demo_home
    port = _free_port()
    log = home / "webserver.log"
    env = dict(os.environ, AVDAG_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), HF_HUB_OFFLINE="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster_webserver",
                "-w",
                str(REPO / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster-webserver did not answer within {STARTUP_S}s:\n{_tail(log)}")
            time.sleep(0.5)
        yield base, log
    finally:
        # The webserver and the code server it spawned share the session started above.
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture(scope="module")
def browser(webserver):
    """Started after the webserver, so the materialization does not run beside Playwright's event loop."""
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def _check(page, webserver, home: Path, name: str, checks) -> None:
    """Run Playwright expectations; on failure, save a screenshot and report the page text and server log."""
    _, log = webserver
    try:
        checks()
    except (AssertionError, sync_api.Error) as exc:
        shot = home / f"{name}.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
            text = page.inner_text("body", timeout=5_000)
        except sync_api.Error as inner:
            text = f"<page text unavailable: {inner}>"
        first = "\n".join(str(exc).splitlines()[:8])  # Playwright appends a long aria snapshot; the page text follows
        raise AssertionError(
            f"{name}: {first}\nurl: {page.url}\nscreenshot: {shot}\npage text:\n{text[:2500]}\n"
            f"webserver log tail:\n{_tail(log, 1500)}"
        ) from None


def test_score_asset_shows_its_lineage_and_judge_metadata(page, webserver, demo_home):
    base, _ = webserver
    home, metadata = demo_home
    expect = sync_api.expect
    judge_id = metadata["finetuned_judge_scores"]["judge_id"].value
    assert judge_id.startswith("offline:")

    page.goto(f"{base}/assets/finetuned_judge_scores?view=partitions&partition={BATCH}")

    def partition_materialization():
        expect(page.get_by_text("Latest materialization").first).to_be_visible()
        expect(page.get_by_text(BATCH, exact=True).first).to_be_visible()
        expect(page.get_by_text("judge_id", exact=True).first).to_be_visible()
        expect(page.get_by_text(judge_id, exact=True).first).to_be_visible()

    _check(page, webserver, home, "score_partition", partition_materialization)

    page.goto(f"{base}/assets/finetuned_judge_scores?view=lineage")

    def lineage_graph():
        graph = page.locator("svg foreignObject")  # the asset graph draws its nodes as HTML inside SVG
        # the focused node's long name is cut in the middle when the graph is zoomed out to fit
        focused = re.compile(r"^finetuned_(judge|\.\.\.|…)_scores$")
        expect(graph.get_by_text(focused).first).to_be_visible()
        for asset in ("finetuned_captions", "clip_splits", "raw_clips", "score_comparison"):
            expect(graph.get_by_text(asset, exact=True).first).to_be_visible()

    _check(page, webserver, home, "score_lineage", lineage_graph)


def test_comparison_chart_is_rendered(page, webserver, demo_home):
    base, _ = webserver
    home, metadata = demo_home
    expect = sync_api.expect
    chart_md = metadata["score_comparison"]["chart"].value
    match = re.fullmatch(r"!\[(?P<alt>[^\]]*)\]\((?P<src>data:image/png;base64,[A-Za-z0-9+/=]+)\)", chart_md)
    assert match, f"chart metadata is not an inline PNG: {chart_md[:120]}"

    page.goto(f"{base}/assets/score_comparison")

    def chart():
        # Markdown metadata sits behind a "[Show Markdown]" button in the metadata table's "chart" row.
        row = page.locator("tr").filter(has=page.get_by_text("chart", exact=True))
        row.get_by_text("Show Markdown").click()
        image = page.get_by_role("dialog").get_by_role("img", name=match["alt"])
        expect(image).to_be_visible()
        expect(image).to_have_attribute("src", match["src"])
        image.evaluate("img => img.decode()")  # resolves once the PNG is decoded, rejects if it cannot be
        size = image.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
        assert size[0] and size[1] > 0 and size[2] > 0, f"chart image did not load: {size}"

    _check(page, webserver, home, "comparison_chart", chart)
