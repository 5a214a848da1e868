"""`avdag search` the way people ask: hints pasted into bash, everyday words, and ranking by meaning.

The catalog is built from synthetic labels whose scenes are known (avdag.demo.synthetic_clips), so
every expected answer comes from the scene, not from what the search returned.
"""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys

import pandas as pd
import pytest

from avdag.cli import HINTS, main
from avdag.core.common.state_store import StateStore
from avdag.core.reporting.catalog import CATALOG, build_catalog, parse_query, query_terms, search
from avdag.core.reporting.meaning import meaning_search, sentence_model, split_query
from avdag.demo.synthetic_clips import SceneSpec, label_for_scene, random_scene

RAIN = ("Light rain", "Heavy rain")
NIGHT = ("Night (poorly lit; few/no streetlights)", "Night (well-lit by streetlights)")


def _scenes() -> dict[str, SceneSpec]:
    rng = random.Random(7)
    scenes = {f"c{i:02d}": random_scene(rng) for i in range(40)}
    # Sure to be there, whatever the draw: rainy nights with and without a pedestrian.
    scenes["rain-night-ped"] = SceneSpec(weather="Light rain", lighting=NIGHT[1], has_pedestrian=True)
    scenes["rain-night"] = SceneSpec(weather="Light rain", lighting=NIGHT[0])
    scenes["heavy-night-ped"] = SceneSpec(weather="Heavy rain", lighting=NIGHT[0], has_pedestrian=True)
    return scenes


SCENES = _scenes()


def expected(predicate) -> set[str]:
    return {clip_id for clip_id, scene in SCENES.items() if predicate(scene)}


@pytest.fixture(scope="module")
def catalog_db(tmp_path_factory):
    rng = random.Random(1)
    rows = [
        {
            "clip_id": clip_id,
            "batch": "b1",
            "sha256": f"sha-{clip_id}",
            "source_url": f"file:///{clip_id}.mp4",
            "label_json": json.dumps(label_for_scene(scene, rng)),
        }
        for clip_id, scene in SCENES.items()
    ]
    db = tmp_path_factory.mktemp("catalog") / "clips.parquet"
    build_catalog(db, pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame())
    return db


@pytest.fixture(scope="module")
def model():
    return sentence_model()


@pytest.fixture
def state(catalog_db, tmp_path, monkeypatch):
    """A state store holding the catalog, as `avdag search` reads it."""
    store = StateStore(str(tmp_path / "state"))
    store.write_bytes(CATALOG, catalog_db.read_bytes())
    monkeypatch.setenv("AVDAG_STATE_URL", str(tmp_path / "state"))
    monkeypatch.setenv("AVDAG_HOME", str(tmp_path / "home"))
    return store


def _printed_ids(text: str) -> list[str]:
    """Clip ids in the printed table, in order."""
    cells = (line.split("|")[1:-1] for line in text.splitlines() if line.startswith("|"))
    return [cell.strip() for row in cells for cell in row if cell.strip() in SCENES]


def _bash_argv(command: str) -> list[str]:
    """The argv bash gives the command's program, quotes and all handled by bash itself."""
    program, _, rest = command.partition(" ")
    assert program == "avdag"
    script = f'{shlex.quote(sys.executable)} -c "import json, sys; print(json.dumps(sys.argv[1:]))" {rest}'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


# ----------------------------------------------------------------------------- argv: one element, one term


def test_each_argument_is_one_term():
    assert query_terms(["weather=Light rain", "night"]) == ["weather=Light rain", "night"]
    assert query_terms(['weather="Light rain" night']) == ["weather=Light rain", "night"]  # quoted whole
    assert query_terms(["rainy night with pedestrians"]) == ["rainy", "night", "with", "pedestrians"]
    assert query_terms(["-weather=Light rain"]) == ["-weather=Light rain"]
    assert parse_query(["weather=Light rain"])[1] == ["Light rain"]


def test_the_demo_hint_finds_clips_when_pasted_into_bash(state, capsys):
    hint = next(h for h in HINTS if "Light rain" in h)
    argv = _bash_argv(hint)
    assert argv == ["search", "weather=Light rain", "night"]  # what the shell leaves of the quotes
    assert main([*argv, "--limit", "100"]) == 0
    want = expected(lambda s: s.weather == "Light rain" and s.is_night)
    assert want and set(_printed_ids(capsys.readouterr().out)) == want
    # The same terms as one string, as the old CLI re-joined them, are a different query: the bug.
    assert search(state.fetch(CATALOG, state.root), " ".join(argv[1:]), limit=None).empty


@pytest.mark.parametrize("hint", [h for h in HINTS if h.startswith("avdag search")])
def test_every_printed_search_hint_runs_in_bash_and_finds_clips(hint, state, capsys, model):
    assert main([*_bash_argv(hint), "--limit", "100"]) == 0
    assert _printed_ids(capsys.readouterr().out), f"{hint!r} found nothing"


# ----------------------------------------------------------------------------- meaning


def test_everyday_words_map_to_fields_and_flags(catalog_db):
    exact, free = split_query("rainy night with pedestrians")
    assert exact == ["weather~rain", "night", "pedestrians"] and free == []
    found = set(meaning_search(catalog_db, "rainy night with pedestrians", limit=None)["clip_id"])
    assert found == expected(lambda s: s.weather in RAIN and s.is_night and s.has_pedestrian)
    assert {"rain-night-ped", "heavy-night-ped"} <= found and "rain-night" not in found
    foggy = set(meaning_search(catalog_db, ["foggy"], limit=None)["clip_id"])
    assert foggy == expected(lambda s: s.weather == "Dense fog") != set()
    dark = set(meaning_search(catalog_db, ["dark", "-rainy"], limit=None)["clip_id"])
    assert dark == expected(lambda s: s.is_night and s.weather not in RAIN)


def test_free_words_rank_by_meaning(catalog_db, model):
    ranked = meaning_search(catalog_db, "someone walking across the street", limit=None, model=model)
    assert list(ranked.columns)[0] == "similarity" and ranked["similarity"].is_monotonic_decreasing
    top = list(ranked["clip_id"][:3])
    assert all(SCENES[c].has_pedestrian for c in top), top
    downpour = meaning_search(catalog_db, "heavy downpour", limit=None, model=model)  # downpour: weather~rain
    assert set(downpour["clip_id"]) <= expected(lambda s: s.weather in RAIN)
    assert all(SCENES[c].weather == "Heavy rain" for c in downpour["clip_id"][:3])
    assert meaning_search(catalog_db, "qwertyuiop", limit=None, model=model).empty


def test_exact_mode_keeps_substrings(state, capsys):
    assert main(["search", "--exact", "walking"]) == 0  # no clip's text says "walking": no ranking, no match
    assert "no matching clips" in capsys.readouterr().out
    assert main(["search", "--exact", "text~walks across", "--limit", "100"]) == 0
    assert set(_printed_ids(capsys.readouterr().out)) == expected(lambda s: s.has_pedestrian)


def test_the_printed_command_is_this_avdag_from_wherever_the_demo_ran(tmp_path, monkeypatch):
    """The hints' `avdag` is the one running: a path from the current folder when PATH would find another."""
    import shutil
    from pathlib import Path

    from avdag.cli import _avdag_command

    monkeypatch.chdir(tmp_path)
    command = _avdag_command()
    resolved = shutil.which("avdag") if command == "avdag" else shlex.split(command)[0]
    assert resolved and Path(resolved).resolve() == (Path(sys.executable).parent / "avdag").resolve()
