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

from avdag.core.common.labels import FIELDS, LIGHTING, WEATHER, validate_label
from avdag.demo import synthetic_clips as synthetic
from avdag.demo.synthetic_clips import (
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


def test_labels_agree_with_their_scenes():
    rng = random.Random(0)
    for scene in _random_scenes(300, seed=2):
        _assert_label_matches(scene, label_for_scene(scene, rng))


def _assert_label_matches(scene: SceneSpec, label: dict) -> None:
    assert (label["weather"], label["lighting"]) == (scene.weather, scene.lighting)
    if scene.traffic_light is None:
        assert label["traffic_light"] == "No traffic light", scene
        assert "intersection" not in label["junction_type"].lower(), scene
    else:
        assert scene.traffic_light in label["traffic_light"].lower(), scene
        assert "intersection" in label["junction_type"].lower(), scene
    assert label["rule_violation"] == ("True" if scene.runs_red_light else "False"), scene
    actions = label["interactive_expanded_metaaction"] or []
    assert ("Vehicle following" in actions) == scene.has_lead_vehicle, scene
    assert ("Yield to VRUs" in actions) == scene.has_pedestrian, scene
    conditions = label["road_conditions"].lower()
    if scene.weather in (LIGHT_RAIN, HEAVY_RAIN):
        assert "wet" in conditions or "rain" in conditions, scene
    if scene.weather == LIGHT_SNOW:
        assert "snow" in conditions, scene
    if scene.road_surface == "dry":
        assert "dry" in conditions, scene
    lane_words = {1: "One", 2: "Two", 3: "Three", 4: "Four"}
    assert label["lane_type"].startswith(lane_words[scene.lanes_per_direction]), scene
    assert 2 <= label["safety_analysis"].count(". ") + 1 <= 3, scene


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
    generate_sample_batch(tmp_path / "c", "b1", 3, seed=5, duration_s=1.0, fps=5)
    assert _batch_files(tmp_path / "c" / "b1") == files  # byte for byte
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


def _sky(frame: np.ndarray) -> np.ndarray:
    """The top band of the picture, safely above the horizon whatever the camera jitter."""
    return frame[: int(0.3 * frame.shape[0])].astype(np.float32)


def _lamp_pixel_counts(frame: np.ndarray) -> dict[str, int]:
    """Pixels saturated in a signal lamp's colour, in the upper half of the picture."""
    r, g, b = (frame[: frame.shape[0] // 2, :, c].astype(int) for c in range(3))
    return {
        "red": int(((r > 170) & (g < 110) & (b < 110)).sum()),
        "green": int(((g > 170) & (r < 120) & (g - b > 50)).sum()),
        "yellow": int(((r > 170) & (g > 130) & (b < 90)).sum()),
    }


def test_night_is_dark_and_streetlights_brighten_it(tmp_path: Path):
    luma = {
        lighting: _luma(_render(tmp_path, replace(STILL, lighting=lighting), str(i))).mean()
        for i, lighting in enumerate(LIGHTING)
    }
    for night in (NIGHT_DARK, NIGHT_LIT):
        assert luma[night] < 0.7 * min(luma[DIRECT_SUN], luma[DIFFUSED], luma[LOW_CONTRAST])
    assert luma[NIGHT_DARK] < 0.4 * luma[DIRECT_SUN]
    assert luma[NIGHT_LIT] > luma[NIGHT_DARK] + 8


def test_streetlights_show_as_bright_blobs_at_night(tmp_path: Path):
    def blob_pixels(lighting: str) -> int:
        frame = _render(tmp_path, replace(STILL, lighting=lighting), lighting[:5])[0]
        return int((_luma(frame[: frame.shape[0] // 2]) > 235).sum())

    assert blob_pixels(NIGHT_LIT) > 50
    assert blob_pixels(NIGHT_DARK) == 0


def test_sky_colour_follows_weather_and_lighting(tmp_path: Path):
    def blueness(weather: str, lighting: str) -> float:
        sky = _sky(_render(tmp_path, replace(STILL, weather=weather, lighting=lighting), "sky")[0])
        return float((sky[..., 2] - sky[..., 0]).mean())

    assert blueness(CLEAR, DIRECT_SUN) > 120  # deep, saturated blue
    assert 30 < blueness(CLEAR, DIFFUSED) < blueness(CLEAR, DIRECT_SUN) - 50  # paler blue
    for grey_weather in (OVERCAST, LIGHT_RAIN, HEAVY_RAIN, DENSE_FOG):
        assert abs(blueness(grey_weather, DIFFUSED)) < 25


def test_partly_cloudy_sky_has_white_clouds(tmp_path: Path):
    def white_fraction(weather: str) -> float:
        sky = _sky(_render(tmp_path, replace(STILL, weather=weather), "clouds")[0])
        return float((sky.min(axis=-1) > 225).mean())

    assert white_fraction(PARTLY_CLOUDY) > 0.01
    assert white_fraction(CLEAR) == 0.0


def test_fog_and_dull_light_flatten_contrast_and_sun_sharpens_it(tmp_path: Path):
    def contrast(weather: str, lighting: str) -> float:
        return float(_luma(_render(tmp_path, replace(STILL, weather=weather, lighting=lighting), "c")).std())

    def ground_contrast(lighting: str) -> float:
        frames = _render(tmp_path, replace(STILL, lighting=lighting), "g")
        return float(_luma(frames[:, frames.shape[1] // 2 :]).std())

    clear = contrast(CLEAR, DIFFUSED)
    assert contrast(DENSE_FOG, DIFFUSED) < 0.6 * clear
    assert contrast(CLEAR, LOW_CONTRAST) < 0.6 * clear
    assert ground_contrast(DIRECT_SUN) > 1.4 * ground_contrast(DIFFUSED)  # hard shadows


def test_rain_and_snow_move_between_frames_when_nothing_else_does(tmp_path: Path):
    change = {
        weather: _frame_to_frame_change(_render(tmp_path, replace(STILL, weather=weather), "p"))
        for weather in (CLEAR, LIGHT_RAIN, HEAVY_RAIN, LIGHT_SNOW)
    }
    assert change[CLEAR] < 0.1
    assert change[LIGHT_RAIN] > 0.5
    assert change[HEAVY_RAIN] > 2.5 * change[LIGHT_RAIN]
    assert change[LIGHT_SNOW] > 0.5


def test_snow_whitens_the_roadside_and_rain_darkens_the_road(tmp_path: Path):
    dry = _luma(_render(tmp_path, STILL, "dry")[0])
    snowy = _luma(_render(tmp_path, replace(STILL, weather=LIGHT_SNOW, road_surface="snowy"), "snow")[0])
    wet = _luma(_render(tmp_path, replace(STILL, weather=LIGHT_RAIN, road_surface="wet"), "wet")[0])
    h, w = dry.shape
    roadside = (slice(int(0.75 * h), h), slice(int(0.85 * w), w))
    ego_lane = (slice(int(0.8 * h), h), slice(int(0.4 * w), int(0.6 * w)))
    assert snowy[roadside].mean() > dry[roadside].mean() + 60
    assert np.median(wet[ego_lane]) < np.median(dry[ego_lane]) - 20


def test_driving_moves_the_road_markings(tmp_path: Path):
    parked = _frame_to_frame_change(_render(tmp_path, STILL, "parked"))
    driving = _frame_to_frame_change(_render(tmp_path, replace(STILL, speed_kmh=50.0), "driving"))
    assert parked < 0.1
    assert driving > 1.0


@pytest.mark.parametrize("colour", ["red", "green", "yellow"])
def test_traffic_light_shows_its_colour(tmp_path: Path, colour: str):
    for lighting in (DIFFUSED, NIGHT_DARK):
        scene = replace(STILL, traffic_light=colour, lighting=lighting)
        counts = _lamp_pixel_counts(_render(tmp_path, scene, colour)[-1])
        assert counts[colour] > 40
        assert all(count < 10 for name, count in counts.items() if name != colour)
    no_light = _lamp_pixel_counts(_render(tmp_path, STILL, "none")[-1])
    assert no_light[colour] < 10


def test_running_a_red_light_keeps_moving_while_stopping_comes_to_rest(tmp_path: Path):
    approach = replace(STILL, traffic_light="red", speed_kmh=50.0)
    stopper = _render(tmp_path, approach, "stop", duration_s=2.0)
    runner = _render(tmp_path, replace(approach, runs_red_light=True), "run", duration_s=2.0)
    assert _frame_to_frame_change(stopper[-4:]) < 0.1
    assert _frame_to_frame_change(runner[-4:]) > 2.0
    # The runner passes the signal: its red lamp has left the picture by the end.
    assert _lamp_pixel_counts(stopper[-1])["red"] > 40
    assert _lamp_pixel_counts(runner[0])["red"] > 0
    assert _lamp_pixel_counts(runner[-1])["red"] < 10


def test_lead_vehicle_darkens_the_lane_ahead(tmp_path: Path):
    empty = _luma(_render(tmp_path, STILL, "empty")[0])
    following = _luma(_render(tmp_path, replace(STILL, has_lead_vehicle=True), "lead")[0])
    h, w = empty.shape
    ahead = (slice(int(0.38 * h), int(0.62 * h)), slice(int(0.42 * w), int(0.58 * w)))
    assert following[ahead].mean() < empty[ahead].mean() - 8


def test_pedestrian_walks_across_a_still_scene(tmp_path: Path):
    waiting = replace(STILL, traffic_light="red")
    assert _frame_to_frame_change(_render(tmp_path, waiting, "nobody")) < 0.1
    assert _frame_to_frame_change(_render(tmp_path, replace(waiting, has_pedestrian=True), "walker")) > 0.3


@pytest.mark.parametrize(("lanes", "two_way"), [(1, True), (2, True), (2, False), (3, False)])
def test_lane_lines_match_lane_count(tmp_path: Path, lanes: int, two_way: bool):
    scene = replace(
        STILL,
        lanes_per_direction=lanes,
        two_way=two_way,
        lane_marking="solid",
        road_type="arterial" if two_way else "highway",
    )
    frame = _render(tmp_path, scene, "lanes")[0]
    row = frame[frame.shape[0] // 2].astype(int)  # a little below the horizon: the whole road is in view
    white_lines = int((np.diff((row.min(axis=-1) > 180).astype(int)) == 1).sum())
    assert white_lines == (2 * lanes if two_way else lanes)
