"""Synthetic clips: labels follow the rubric and the pictures carry the label."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from avdag.core import synthetic
from avdag.core.labels import FIELDS, LIGHTING, WEATHER, validate_label
from avdag.core.synthetic import (
    LABEL_SUFFIX,
    VIDEO_SUFFIX,
    SceneSpec,
    generate_sample_batch,
    label_for_scene,
    plan_clip,
    random_scene,
    render_clip,
)

CLEAR, OVERCAST, PARTLY_CLOUDY, LIGHT_RAIN, HEAVY_RAIN, LIGHT_SNOW, DENSE_FOG = WEATHER[:7]
DIFFUSED, LOW_CONTRAST, DIRECT_SUN, NIGHT_DARK, NIGHT_LIT = LIGHTING

# A quiet daytime street where nothing moves unless a test says so.
STILL = SceneSpec(weather=CLEAR, lighting=DIFFUSED, road_type="arterial", lanes_per_direction=2, speed_kmh=0.0)


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _render(tmp_path: Path, scene: SceneSpec, name: str, *, duration_s: float = 1.0, seed: int = 7) -> np.ndarray:
    path = tmp_path / f"{name}.mp4"
    render_clip(scene, path, duration_s=duration_s, fps=10, seed=seed)
    return _frames(path)


def _frame_to_frame_change(frames: np.ndarray) -> float:
    luma = _luma(frames)
    return float(np.abs(np.diff(luma, axis=0)).mean())


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


def _random_scenes(n: int, seed: int = 0) -> list[SceneSpec]:
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(n)]


def test_random_labels_are_valid_and_in_rubric_order():
    rng = random.Random(1)
    for scene in _random_scenes(400):
        label = label_for_scene(scene, rng)
        assert validate_label(label) == []
        assert tuple(label) == FIELDS


@pytest.mark.parametrize("scene", _random_scenes(300, seed=2), ids=lambda s: "")
def test_label_agrees_with_scene(scene: SceneSpec):
    label = label_for_scene(scene, random.Random(0))
    assert (label["weather"], label["lighting"]) == (scene.weather, scene.lighting)
    if scene.traffic_light is None:
        assert label["traffic_light"] == "No traffic light"
        assert "intersection" not in label["junction_type"].lower()
    else:
        assert scene.traffic_light in label["traffic_light"].lower()
        assert "intersection" in label["junction_type"].lower()
    assert label["rule_violation"] == ("True" if scene.runs_red_light else "False")
    actions = label["interactive_expanded_metaaction"] or []
    assert ("Vehicle following" in actions) == scene.has_lead_vehicle
    assert ("Yield to VRUs" in actions) == scene.has_pedestrian
    conditions = label["road_conditions"].lower()
    if scene.weather in (LIGHT_RAIN, HEAVY_RAIN):
        assert "wet" in conditions or "rain" in conditions
    if scene.weather == LIGHT_SNOW:
        assert "snow" in conditions
    if scene.road_surface == "dry":
        assert "dry" in conditions
    lane_words = {1: "One", 2: "Two", 3: "Three", 4: "Four"}
    assert label["lane_type"].startswith(lane_words[scene.lanes_per_direction])
    assert 2 <= label["safety_analysis"].count(". ") + 1 <= 3


def test_difficulty_tracks_hazards():
    easy = replace(STILL, speed_kmh=40.0)
    assert label_for_scene(easy, random.Random(0))["driving_difficulty"] == 1
    hard = replace(easy, weather=DENSE_FOG, lighting=NIGHT_DARK, has_pedestrian=True)
    label = label_for_scene(hard, random.Random(0))
    assert label["driving_difficulty"] == 4
    assert label["interesting_scenario"] == "True"


def test_scene_rejects_inconsistent_specs():
    with pytest.raises(ValueError):
        SceneSpec(weather="N/A")
    with pytest.raises(ValueError):
        SceneSpec(traffic_light="green", runs_red_light=True)
    with pytest.raises(ValueError):
        SceneSpec(lanes_per_direction=2, ego_lane=2)


def test_batch_plan_balances_weather_and_lighting():
    labels = [plan_clip(0, i)[2] for i in range(70)]
    weather = Counter(label["weather"] for label in labels)
    lighting = Counter(label["lighting"] for label in labels)
    assert set(weather.values()) == {10} and "N/A" not in weather
    assert set(lighting.values()) == {14}
    first_40 = labels[:40]
    for field in ("weather", "lighting"):
        assert max(Counter(label[field] for label in first_40).values()) < 0.4 * 40


def test_batch_plan_depends_only_on_seed_and_index():
    assert plan_clip(3, 5) == plan_clip(3, 5)
    seed_0 = [plan_clip(0, i)[2] for i in range(10)]
    seed_1 = [plan_clip(1, i)[2] for i in range(10)]
    assert seed_0 != seed_1
    assert plan_clip(0, 0)[0] == "syn-0000-0000"
    assert len({plan_clip(0, i)[0] for i in range(50)}) == 50


def test_red_light_running_happens_but_rarely():
    violations = sum(plan_clip(0, i)[2]["rule_violation"] == "True" for i in range(400))
    assert 0.03 * 400 <= violations <= 0.15 * 400


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _batch_files(batch_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(batch_dir)): p.read_bytes() for p in sorted(batch_dir.rglob("*")) if p.is_file()}


def test_generate_sample_batch_layout_and_determinism(tmp_path: Path):
    ids = generate_sample_batch(tmp_path / "a", "b1", 3, seed=5, duration_s=1.0, fps=5)
    assert ids == ["syn-0005-0000", "syn-0005-0001", "syn-0005-0002"]
    files = _batch_files(tmp_path / "a" / "b1")
    expected = {f"videos/{i}{VIDEO_SUFFIX}" for i in ids} | {f"metas/{i}{LABEL_SUFFIX}" for i in ids}
    assert set(files) == expected  # nothing else, in particular no temp files
    for index, clip_id in enumerate(ids):
        label = json.loads(files[f"metas/{clip_id}{LABEL_SUFFIX}"])
        assert validate_label(label) == []
        assert label == plan_clip(5, index)[2]
    again = _batch_files(Path(tmp_path / "c") / "b1") if generate_sample_batch(tmp_path / "c", "b1", 3, seed=5, duration_s=1.0, fps=5) else {}
    assert again == files
    generate_sample_batch(tmp_path / "d", "b1", 3, seed=6, duration_s=1.0, fps=5)
    other = _batch_files(tmp_path / "d" / "b1")
    assert set(other).isdisjoint(files)
    assert sorted(other.values()) != sorted(files.values())


def test_generate_sample_batch_is_idempotent_and_repairs(tmp_path: Path):
    generate_sample_batch(tmp_path, "b", 2, seed=0, duration_s=1.0, fps=5)
    videos = sorted((tmp_path / "b" / "videos").iterdir())
    stamps = [p.stat().st_mtime_ns for p in videos]
    generate_sample_batch(tmp_path, "b", 2, seed=0, duration_s=1.0, fps=5)
    assert [p.stat().st_mtime_ns for p in videos] == stamps  # untouched
    videos[0].write_bytes(b"truncated")
    generate_sample_batch(tmp_path, "b", 2, seed=0, duration_s=1.0, fps=5)
    assert len(_frames(videos[0])) == 5


def test_render_clip_geometry(tmp_path: Path):
    path = tmp_path / "clip.mp4"
    render_clip(random_scene(random.Random(4)), path, duration_s=2.0, fps=8, width=320, height=180, seed=1)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 8
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert abs(len(frames) - 16) <= 1
    assert frames[0].shape == (180, 320, 3)
    assert path.stat().st_size < 400_000
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_render_clip_same_seed_same_pixels_other_seed_differs(tmp_path: Path):
    scene = random_scene(random.Random(9))
    first = _render(tmp_path, scene, "a", seed=3)
    second = _render(tmp_path, scene, "b", seed=3)
    third = _render(tmp_path, scene, "c", seed=4)
    assert np.array_equal(first, second)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    assert not np.array_equal(first, third)


def test_render_clip_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def explode(self, index):
        raise RuntimeError("boom")

    monkeypatch.setattr(synthetic._ClipRenderer, "frame", explode)
    with pytest.raises(RuntimeError):
        render_clip(STILL, tmp_path / "clip.mp4")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Pictures carry the label
# ---------------------------------------------------------------------------------------------
