"""Synthetic dashcam clips whose pictures follow their labels.

The platform needs a sample dataset that runs anywhere (no downloads, no GPU) and still teaches a
tiny video model something: every label value below is drawn from a latent ``SceneSpec`` and the
same scene drives the renderer, so weather, lighting, lanes, traffic lights, lead vehicles and
pedestrians show up as strong, global, consistent picture cues (with per-clip jitter so no two
clips are the same image). Layout on disk matches the recipe's dataset::

    <root>/<batch>/videos/<clip_id>.camera_front_wide_120fov.mp4
    <root>/<batch>/metas/<clip_id>.label.json

Rendering is a flat-ground pinhole camera drawn with vectorised numpy: static layers (sky, road
albedo, headlight cone, fog) are computed once per clip, and only the moving parts (dashes, stop
line, shadows, light pools, objects, rain/snow) are redrawn per frame.
"""

from __future__ import annotations

import json
import math
import os
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Any

import av
import numpy as np

from avdag.core.common.labels import FIELDS, LIGHTING, METAACTIONS, WEATHER, validate_label

__all__ = [
    "LABEL_SUFFIX",
    "VIDEO_SUFFIX",
    "SceneSpec",
    "clip_id_for",
    "generate_sample_batch",
    "label_for_scene",
    "plan_clip",
    "random_scene",
    "render_clip",
]

VIDEO_SUFFIX = ".camera_front_wide_120fov.mp4"
LABEL_SUFFIX = ".label.json"

SCENE_WEATHERS = tuple(w for w in WEATHER if w != "N/A")
CLEAR, OVERCAST, PARTLY_CLOUDY, LIGHT_RAIN, HEAVY_RAIN, LIGHT_SNOW, DENSE_FOG = SCENE_WEATHERS
DIFFUSED, LOW_CONTRAST, DIRECT_SUN, NIGHT_DARK, NIGHT_LIT = LIGHTING
ROAD_TYPES = ("local", "arterial", "highway")
ROAD_SURFACES = ("dry", "wet", "snowy")
TRAFFIC_LIGHT_COLOURS = ("red", "green", "yellow")
LANE_MARKINGS = ("dashed", "solid")
_FOLLOWING, _YIELD_TO_VRUS = METAACTIONS[2], METAACTIONS[1]

# ----------------------------------------------------------------------------------------------
# The latent scene
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneSpec:
    """Everything the label states about a clip; the renderer and the labeller both read it.

    ``ego_lane`` counts from the right (0 = rightmost lane of the ego's direction).
    """

    weather: str = CLEAR
    lighting: str = DIFFUSED
    road_type: str = "local"
    lanes_per_direction: int = 1
    two_way: bool = True
    lane_marking: str = "dashed"
    ego_lane: int = 0
    road_surface: str = "dry"
    traffic_light: str | None = None
    runs_red_light: bool = False
    has_pedestrian: bool = False
    has_lead_vehicle: bool = False
    speed_kmh: float = 40.0
    speed_limit_mph: int | None = None

    def __post_init__(self) -> None:
        _require(self.weather in SCENE_WEATHERS, f"weather {self.weather!r}")
        _require(self.lighting in LIGHTING, f"lighting {self.lighting!r}")
        _require(self.road_type in ROAD_TYPES, f"road_type {self.road_type!r}")
        _require(self.road_surface in ROAD_SURFACES, f"road_surface {self.road_surface!r}")
        _require(self.lane_marking in LANE_MARKINGS, f"lane_marking {self.lane_marking!r}")
        _require(self.traffic_light in (None, *TRAFFIC_LIGHT_COLOURS), f"traffic_light {self.traffic_light!r}")
        _require(1 <= self.lanes_per_direction <= 4, f"lanes_per_direction {self.lanes_per_direction}")
        _require(0 <= self.ego_lane < self.lanes_per_direction, f"ego_lane {self.ego_lane}")
        _require(not self.runs_red_light or self.traffic_light == "red", "runs_red_light needs a red light")
        _require(self.speed_kmh >= 0, f"speed_kmh {self.speed_kmh}")

    @property
    def is_night(self) -> bool:
        return self.lighting in (NIGHT_DARK, NIGHT_LIT)

    @property
    def has_midblock_crosswalk(self) -> bool:
        """A pedestrian away from a signal crosses at a marked crosswalk of its own."""
        return self.has_pedestrian and self.traffic_light is None

    @property
    def ego_stops(self) -> bool:
        """The ego brakes to a halt: for a red/yellow signal it obeys, or to let a pedestrian cross."""
        obeys_signal = self.traffic_light in ("red", "yellow") and not self.runs_red_light
        return obeys_signal or self.has_pedestrian

    @property
    def speed_mph(self) -> int:
        return int(round(self.speed_kmh / 1.609344))


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f"invalid SceneSpec: {what}")


def random_scene(rng: random.Random) -> SceneSpec:
    """A scene with uniformly drawn weather and lighting and plausible, mutually consistent details."""
    return _scene_with(rng, rng.choice(SCENE_WEATHERS), rng.choice(LIGHTING))


def _scene_with(rng: random.Random, weather: str, lighting: str) -> SceneSpec:
    road_type = rng.choices(ROAD_TYPES, weights=(0.4, 0.35, 0.25))[0]
    lanes, two_way, speed_range = _road_shape(road_type, rng)
    traffic_light = _random_traffic_light(road_type, rng)
    runs_red = traffic_light == "red" and rng.random() < 0.5
    pedestrian_possible = road_type != "highway" and traffic_light != "green" and not runs_red
    return SceneSpec(
        weather=weather,
        lighting=lighting,
        road_type=road_type,
        lanes_per_direction=lanes,
        two_way=two_way,
        lane_marking="solid" if lanes > 1 and rng.random() < 0.25 else "dashed",
        ego_lane=rng.randrange(lanes),
        road_surface=_random_surface(weather, rng),
        traffic_light=traffic_light,
        runs_red_light=runs_red,
        has_pedestrian=pedestrian_possible and rng.random() < 0.35,
        has_lead_vehicle=rng.random() < 0.45,
        speed_kmh=round(rng.uniform(*speed_range), 1),
        speed_limit_mph=_random_speed_limit(road_type, rng),
    )


def _road_shape(road_type: str, rng: random.Random) -> tuple[int, bool, tuple[float, float]]:
    """(lanes per direction, two-way?, speed range km/h) typical of the road type."""
    if road_type == "highway":
        return rng.choice((2, 3)), False, (80.0, 110.0)
    if road_type == "arterial":
        return 2, True, (45.0, 65.0)
    return 1, True, (25.0, 45.0)


def _random_traffic_light(road_type: str, rng: random.Random) -> str | None:
    if road_type == "highway" or rng.random() >= 0.5:
        return None
    return rng.choices(TRAFFIC_LIGHT_COLOURS, weights=(0.5, 0.3, 0.2))[0]


def _random_surface(weather: str, rng: random.Random) -> str:
    """Rain wets the road, snow whitens it; grey weather sometimes leaves it damp."""
    if weather in (LIGHT_RAIN, HEAVY_RAIN):
        return "wet"
    if weather == LIGHT_SNOW:
        return "snowy"
    if weather in (OVERCAST, DENSE_FOG) and rng.random() < 0.3:
        return "wet"
    return "dry"


def _random_speed_limit(road_type: str, rng: random.Random) -> int | None:
    if rng.random() >= 0.5:
        return None
    return {"local": 25, "arterial": 40, "highway": 65}[road_type]


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------


def label_for_scene(scene: SceneSpec, rng: random.Random) -> dict[str, Any]:
    """The 15-field label a careful annotator would write for this scene (wording varies via rng)."""
    difficulty = _driving_difficulty(scene)
    label: dict[str, Any] = {
        "weather": scene.weather,
        "lighting": scene.lighting,
        "road_conditions": _road_conditions_text(scene, rng),
        "traffic_light": _traffic_light_text(scene, rng),
        "traffic_sign": _traffic_sign_text(scene, rng),
        "additional_traffic_rules": _traffic_rules_text(scene),
        "road_type": _road_type_text(scene),
        "junction_type": _junction_text(scene),
        "lane_type": _lane_type_text(scene),
        "additional_map_rules": _map_rules_text(scene),
        "interactive_expanded_metaaction": _metaactions(scene),
        "safety_analysis": _safety_analysis(scene, rng),
        "driving_difficulty": difficulty,
        "rule_violation": "True" if scene.runs_red_light else "False",
        "interesting_scenario": "True" if _is_interesting(scene, difficulty) else "False",
    }
    ordered = {field: label[field] for field in FIELDS}
    issues = validate_label(ordered)
    if issues:
        raise RuntimeError(f"synthetic label is invalid: {[str(issue) for issue in issues]}")
    return ordered


def _road_conditions_text(scene: SceneSpec, rng: random.Random) -> str:
    options = {
        "dry": ("Dry, clean asphalt", "Dry asphalt in good repair", "Dry paved surface, no debris"),
        "wet": (
            "Wet asphalt with puddles",
            "Rain-soaked asphalt with standing water",
            "Wet, reflective pavement with scattered puddles",
        ),
        "snowy": (
            "Wet asphalt with snow piled along both edges",
            "Slushy asphalt with snow-covered shoulders and clear wheel tracks",
            "Partly snow-covered asphalt with darker tyre tracks",
        ),
    }[scene.road_surface]
    return rng.choice(options)


def _traffic_light_text(scene: SceneSpec, rng: random.Random) -> str:
    if scene.traffic_light is None:
        return "No traffic light"
    behind_lead = " behind the car in front" if scene.has_lead_vehicle else ""
    if scene.traffic_light == "green":
        return rng.choice(
            (
                "The signal ahead is green, so the ego vehicle keeps its speed and drives through the intersection.",
                "A green light lets the ego vehicle continue straight across the junction without slowing.",
            )
        )
    if scene.runs_red_light:
        return rng.choice(
            (
                "The traffic light is red, yet the ego vehicle keeps going and crosses the intersection "
                "without stopping.",
                "The ego vehicle ignores the red signal and drives over the stop line into the intersection.",
            )
        )
    if scene.traffic_light == "red":
        return rng.choice(
            (
                f"The traffic light is red; the ego vehicle slows down and stops before the stop line{behind_lead}.",
                f"A red signal controls the intersection, so the ego vehicle brakes to a full stop{behind_lead}.",
            )
        )
    return rng.choice(
        (
            f"The signal shows yellow as the ego vehicle approaches, so it brakes and stops at the line{behind_lead}.",
            f"The light is yellow; rather than pushing through, the ego vehicle slows and halts{behind_lead}.",
        )
    )


def _traffic_sign_text(scene: SceneSpec, rng: random.Random) -> str:
    signs = []
    if scene.speed_limit_mph is not None:
        signs.append(f"A speed limit {scene.speed_limit_mph} mph sign stands on the right.")
    if scene.has_midblock_crosswalk:
        signs.append("A yellow pedestrian-crossing warning sign marks the crosswalk.")
    if not signs:
        return rng.choice(("No traffic signs are visible.", "There are no relevant traffic signs."))
    return " ".join(signs)


def _traffic_rules_text(scene: SceneSpec) -> str | None:
    if scene.has_midblock_crosswalk:
        return "A marked mid-block crosswalk gives pedestrians the right of way."
    if scene.traffic_light is not None:
        return "Traffic signals control the intersection, with a pedestrian crosswalk before it."
    return None


def _road_type_text(scene: SceneSpec) -> str:
    return {
        "local": "Local street -- quiet two-way road with low speeds",
        "arterial": "Arterial road -- multi-lane urban through route",
        "highway": "Divided highway with high-speed traffic",
    }[scene.road_type]


def _junction_text(scene: SceneSpec) -> str:
    if scene.traffic_light is not None:
        return "Four-way intersection controlled by traffic lights"
    if scene.has_midblock_crosswalk:
        return "Straight segment with a mid-block pedestrian crossing"
    return "Straight road segment, no junctions"


_NUMBER_WORDS = {1: "One", 2: "Two", 3: "Three", 4: "Four"}


def _lane_type_text(scene: SceneSpec) -> str:
    count = _NUMBER_WORDS[scene.lanes_per_direction]
    noun = "lane" if scene.lanes_per_direction == 1 else "lanes"
    if scene.two_way:
        return f"{count} {noun} in each direction, no turn lanes"
    return f"{count} {noun} in the ego's direction, separated from oncoming traffic by a median"


def _map_rules_text(scene: SceneSpec) -> str | None:
    rules = []
    if scene.traffic_light is not None:
        rules.append("A stop line and zebra crosswalk markings precede the intersection.")
    elif scene.has_midblock_crosswalk:
        rules.append("Zebra crosswalk stripes cross the road ahead.")
    if scene.lanes_per_direction > 1:
        if scene.lane_marking == "solid":
            rules.append("Solid white lines separate the lanes, so lane changes are discouraged.")
        else:
            rules.append("Dashed white lines separate the lanes.")
    if scene.two_way:
        rules.append("A double yellow centre line divides the two directions.")
    return " ".join(rules[:2]) or None


def _metaactions(scene: SceneSpec) -> list[str] | None:
    actions = []
    if scene.has_lead_vehicle:
        actions.append(_FOLLOWING)
    if scene.has_pedestrian:
        actions.append(_YIELD_TO_VRUS)
    return actions or None


_WEATHER_PHRASES = {
    CLEAR: "under clear skies",
    OVERCAST: "under a grey overcast sky",
    PARTLY_CLOUDY: "under a partly cloudy sky",
    LIGHT_RAIN: "in light rain",
    HEAVY_RAIN: "in heavy rain",
    LIGHT_SNOW: "in light snowfall",
    DENSE_FOG: "in dense fog",
}
_LIGHTING_PHRASES = {
    DIFFUSED: "in soft, diffused daylight",
    LOW_CONTRAST: "in dull, low-contrast daylight",
    DIRECT_SUN: "in bright direct sunlight",
    NIGHT_DARK: "at night with almost no street lighting",
    NIGHT_LIT: "at night along a road lit by streetlights",
}
_ROAD_PHRASES = {"local": "quiet local street", "arterial": "busy arterial road", "highway": "divided highway"}


def _safety_analysis(scene: SceneSpec, rng: random.Random) -> str:
    """Setting, then what happens, then the main hazard: 2-3 sentences."""
    sentences = [_setting_sentence(scene), _events_sentence(scene, rng)]
    hazard = _hazard_sentence(scene)
    if hazard:
        sentences.append(hazard)
    return " ".join(sentences)


def _setting_sentence(scene: SceneSpec) -> str:
    where = f"along a {_ROAD_PHRASES[scene.road_type]}"
    if scene.lanes_per_direction > 1:
        where = f"in {_ego_lane_phrase(scene)} of a {_ROAD_PHRASES[scene.road_type]}"
    return (
        f"The ego vehicle drives {where} at about {scene.speed_mph} mph "
        f"{_WEATHER_PHRASES[scene.weather]}, {_LIGHTING_PHRASES[scene.lighting]}."
    )


def _ego_lane_phrase(scene: SceneSpec) -> str:
    if scene.ego_lane == 0:
        return "the rightmost lane"
    if scene.ego_lane == scene.lanes_per_direction - 1:
        return "the leftmost lane"
    return "a middle lane"


def _events_sentence(scene: SceneSpec, rng: random.Random) -> str:
    events = []
    if scene.has_lead_vehicle:
        events.append("a car ahead in the same lane sets the pace and the ego keeps a safe gap")
    if scene.runs_red_light:
        events.append("the ego crosses the stop line while the signal is red, a clear violation")
    elif scene.traffic_light in ("red", "yellow"):
        events.append(f"it stops for the {scene.traffic_light} signal at the intersection")
    elif scene.traffic_light == "green":
        events.append("it passes through the intersection on a green light")
    if scene.has_pedestrian:
        events.append("a pedestrian walks across the road in front, and the ego waits for them")
    if not events:
        return rng.choice(
            (
                "No other road users interact with the ego vehicle.",
                "The road ahead is empty and the ego simply holds its lane.",
            )
        )
    sentence = "; ".join(events)
    return sentence[0].upper() + sentence[1:] + "."


def _hazard_sentence(scene: SceneSpec) -> str | None:
    by_weather = {
        DENSE_FOG: "Fog cuts visibility to a few car lengths, so hazards appear late.",
        HEAVY_RAIN: "Heavy rain blurs the view and makes the road slippery.",
        LIGHT_SNOW: "Falling snow and slushy edges call for gentle braking and steering.",
        LIGHT_RAIN: "The wet surface lengthens braking distances.",
    }
    if scene.weather in by_weather:
        return by_weather[scene.weather]
    if scene.lighting == NIGHT_DARK:
        return "Only the headlights reveal the road, so anything outside their beam is hard to see."
    if scene.road_surface == "wet":
        return "The road is still wet, which reduces grip."
    return None


def _driving_difficulty(scene: SceneSpec) -> int:
    """1 easy ... 4 very hard: adverse weather, darkness and people on the road each add difficulty."""
    weather_cost = {LIGHT_RAIN: 1, LIGHT_SNOW: 1, HEAVY_RAIN: 2, DENSE_FOG: 2}.get(scene.weather, 0)
    darkness_cost = 1 if scene.lighting == NIGHT_DARK else 0
    pedestrian_cost = 1 if scene.has_pedestrian else 0
    return max(1, min(4, 1 + weather_cost + darkness_cost + pedestrian_cost))


def _is_interesting(scene: SceneSpec, difficulty: int) -> bool:
    return scene.runs_red_light or scene.has_pedestrian or difficulty >= 3


# ----------------------------------------------------------------------------------------------
# Rendering: look (colours), geometry, motion
# ----------------------------------------------------------------------------------------------

_WHITE = np.array([236.0, 236.0, 232.0], np.float32)
_YELLOW = np.array([232.0, 188.0, 40.0], np.float32)
_ASPHALT = {"dry": (96.0, 96.0, 99.0), "wet": (52.0, 54.0, 58.0), "snowy": (120.0, 122.0, 128.0)}
_GRASS = np.array([76.0, 110.0, 56.0], np.float32)
_SNOW = np.array([228.0, 231.0, 236.0], np.float32)
_CONCRETE = np.array([150.0, 150.0, 144.0], np.float32)
_LAMP_COLOURS = {
    "red": np.array([255.0, 40.0, 30.0], np.float32),
    "yellow": np.array([255.0, 190.0, 20.0], np.float32),
    "green": np.array([40.0, 255.0, 110.0], np.float32),
}
_STREETLAMP = np.array([255.0, 205.0, 130.0], np.float32)
_REGULATORY_SIGN = np.array([240.0, 240.0, 240.0], np.float32)
_WARNING_SIGN = np.array([245.0, 205.0, 30.0], np.float32)
_POLE_GREY = np.array([84.0, 85.0, 88.0], np.float32)
_SIGNAL_HOUSING = np.array([18.0, 18.0, 20.0], np.float32)
_BLACK = np.zeros(3, np.float32)

_DAY_SKIES = {  # (top, horizon) for blue-sky weather
    DIRECT_SUN: ((35.0, 105.0, 225.0), (165.0, 205.0, 248.0)),
    DIFFUSED: ((125.0, 160.0, 205.0), (205.0, 215.0, 228.0)),
    LOW_CONTRAST: ((148.0, 155.0, 164.0), (180.0, 183.0, 188.0)),
}
_GREY_SKIES = {  # (top, horizon) before daylight scaling
    OVERCAST: ((158.0, 161.0, 166.0), (192.0, 193.0, 196.0)),
    LIGHT_RAIN: ((126.0, 129.0, 135.0), (160.0, 162.0, 166.0)),
    HEAVY_RAIN: ((84.0, 87.0, 93.0), (112.0, 114.0, 119.0)),
    LIGHT_SNOW: ((196.0, 199.0, 206.0), (224.0, 226.0, 230.0)),
    DENSE_FOG: ((206.0, 208.0, 210.0), (206.0, 208.0, 210.0)),
}
_NIGHT_SKIES = {
    NIGHT_DARK: ((3.0, 5.0, 14.0), (14.0, 16.0, 28.0)),
    NIGHT_LIT: ((10.0, 12.0, 30.0), (58.0, 46.0, 48.0)),  # city glow at the horizon
}
_NIGHT_CLOUDED_SKIES = {
    NIGHT_DARK: ((20.0, 20.0, 25.0), (34.0, 34.0, 39.0)),
    NIGHT_LIT: ((44.0, 39.0, 40.0), (80.0, 66.0, 58.0)),
}
_DAYLIGHT = {DIRECT_SUN: 1.05, DIFFUSED: 0.97, LOW_CONTRAST: 0.86}
_AMBIENT = {DIRECT_SUN: 1.3, DIFFUSED: 0.92, LOW_CONTRAST: 0.85, NIGHT_DARK: 0.07, NIGHT_LIT: 0.13}
_WEATHER_DIMMING = {OVERCAST: 0.9, LIGHT_RAIN: 0.85, HEAVY_RAIN: 0.68, LIGHT_SNOW: 0.97, DENSE_FOG: 0.95}
_CONTRAST = {DIRECT_SUN: 1.3, DIFFUSED: 1.0, LOW_CONTRAST: 0.55, NIGHT_DARK: 1.0, NIGHT_LIT: 1.0}
_FOG_DISTANCE_M = {DENSE_FOG: 10.0, HEAVY_RAIN: 70.0, LIGHT_SNOW: 140.0, LIGHT_RAIN: 220.0}


@dataclass(frozen=True)
class _Look:
    """How the scene's lighting and weather colour the picture."""

    sky_top: np.ndarray
    sky_horizon: np.ndarray
    ambient: float
    contrast: float
    headlights: float
    streetlights: bool
    sun: bool
    fog_colour: np.ndarray
    fog_distance_m: float
    fog_floor: float  # haze even right in front of the camera (dense fog only)

    def fog_weight(self, depth_m: Any) -> Any:
        """How far toward the fog colour something at `depth_m` is blended (float or array)."""
        return self.fog_floor + (1.0 - self.fog_floor) * (1.0 - np.exp(-depth_m / self.fog_distance_m))


def _look_for(scene: SceneSpec) -> _Look:
    top, horizon = _sky_colours(scene)
    return _Look(
        sky_top=top,
        sky_horizon=horizon,
        ambient=_AMBIENT[scene.lighting] * _WEATHER_DIMMING.get(scene.weather, 1.0),
        contrast=_CONTRAST[scene.lighting],
        headlights={NIGHT_DARK: 1.25, NIGHT_LIT: 0.7}.get(scene.lighting, 0.0),
        streetlights=scene.lighting == NIGHT_LIT,
        sun=scene.lighting == DIRECT_SUN,
        fog_colour=horizon,  # distant things melt into the sky at the horizon
        fog_distance_m=_FOG_DISTANCE_M.get(scene.weather, math.inf),
        fog_floor=0.3 if scene.weather == DENSE_FOG else 0.0,
    )


def _sky_colours(scene: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    blue_sky = scene.weather in (CLEAR, PARTLY_CLOUDY)
    if scene.is_night:
        table = _NIGHT_SKIES if blue_sky else _NIGHT_CLOUDED_SKIES
        top, horizon = table[scene.lighting]
        if scene.weather == DENSE_FOG:
            top = horizon = tuple(1.6 * c for c in horizon)
    elif blue_sky:
        top, horizon = _DAY_SKIES[scene.lighting]
    else:
        scale = _DAYLIGHT[scene.lighting]
        top, horizon = (tuple(scale * c for c in colour) for colour in _GREY_SKIES[scene.weather])
    return np.clip(np.array(top, np.float32), 0, 255), np.clip(np.array(horizon, np.float32), 0, 255)


LANE_WIDTH_M = 3.6
CAMERA_HEIGHT_M = 1.5
LINE_HALF_WIDTH_M = 0.12
DASH_PERIOD_M, DASH_LENGTH_M = 12.0, 4.5
MAX_GROUND_DISTANCE_M = 400.0
STOP_MARGIN_M = 3.0
POLE_SPACING_M = 30.0
SHADOW_SPACING_M = 17.0


@dataclass(frozen=True)
class _RoadLayout:
    """Lateral positions (metres, + to the right of the ego lane centre) of the road's features."""

    right_edge: float
    centre: float  # boundary between the ego's direction and the opposite direction / median
    left_edge: float
    solid_white: tuple[float, ...]
    dashed_white: tuple[float, ...]
    yellow: tuple[float, ...]
    lane_centres: tuple[float, ...]


def _road_layout(scene: SceneSpec) -> _RoadLayout:
    n = scene.lanes_per_direction
    right = (scene.ego_lane + 0.5) * LANE_WIDTH_M
    centre = right - n * LANE_WIDTH_M
    inner = tuple(right - k * LANE_WIDTH_M for k in range(1, n))
    centres = tuple(right - (k + 0.5) * LANE_WIDTH_M for k in range(n))
    solid_white = [right - 0.3]
    between = list(inner)
    if scene.two_way:
        left = centre - n * LANE_WIDTH_M
        between += [centre - k * LANE_WIDTH_M for k in range(1, n)]
        solid_white.append(left + 0.3)
        yellow = (centre - 0.18, centre + 0.18)
        centres += tuple(centre - (k + 0.5) * LANE_WIDTH_M for k in range(n))
    else:
        left = centre
        yellow = (centre + 0.3,)
    dashed = tuple(between) if scene.lane_marking == "dashed" else ()
    if scene.lane_marking == "solid":
        solid_white += between
    return _RoadLayout(right, centre, left, tuple(solid_white), dashed, yellow, centres)


@dataclass(frozen=True)
class _Motion:
    """Distance the ego has travelled at time t: cruise, or brake uniformly to a stop."""

    speed_mps: float
    stop_time_s: float | None

    def travelled(self, t: float) -> float:
        if self.stop_time_s is None:
            return self.speed_mps * t
        t = min(t, self.stop_time_s)
        return self.speed_mps * t - self.speed_mps * t * t / (2.0 * self.stop_time_s)

    def braking(self, t: float) -> bool:
        return self.stop_time_s is not None and self.speed_mps > 0 and t < self.stop_time_s


def _motion_and_crossing(scene: SceneSpec, duration_s: float, lead_gap_m: float) -> tuple[_Motion, float | None]:
    """Ego motion, and the initial distance to the stop line / crosswalk (None when there is none).

    A stopping ego halts exactly STOP_MARGIN_M (plus the lead car's gap) before the line; a passing
    ego crosses the line a little after mid-clip, so running a red light is visible.
    """
    speed = scene.speed_kmh / 3.6
    has_crossing = scene.traffic_light is not None or scene.has_midblock_crosswalk
    if scene.ego_stops:
        stop_time = 0.7 * duration_s
        gap = lead_gap_m if scene.has_lead_vehicle else 0.0
        return _Motion(speed, stop_time), speed * stop_time / 2.0 + STOP_MARGIN_M + gap
    crossing = max(speed * 0.55 * duration_s, 10.0) if has_crossing else None
    return _Motion(speed, None), crossing


@dataclass(frozen=True)
class _Jitter:
    """Per-clip nuisance variation, so that clips with the same label are not the same picture."""

    tone: np.ndarray  # per-channel gain
    dash_phase: float
    pole_phase: float
    shadow_phase: float
    puddle_phase: np.ndarray
    lead_gap: float
    car_colour: np.ndarray
    shirt_colour: np.ndarray
    sign_depth: float
    pedestrian_start: float


def _random_jitter(rng: np.random.Generator) -> _Jitter:
    car_colours = [(40, 42, 48), (70, 20, 24), (30, 40, 70), (55, 55, 58)]
    shirt_colours = [(230, 70, 40), (240, 200, 40), (60, 120, 230), (230, 230, 230)]
    return _Jitter(
        tone=(rng.uniform(0.95, 1.05) * rng.uniform(0.97, 1.03, size=3)).astype(np.float32),
        dash_phase=rng.uniform(0, DASH_PERIOD_M),
        pole_phase=rng.uniform(0, POLE_SPACING_M),
        shadow_phase=rng.uniform(0, SHADOW_SPACING_M),
        puddle_phase=rng.uniform(0, 2 * math.pi, size=2),
        lead_gap=rng.uniform(10.0, 15.0),
        car_colour=np.array(car_colours[rng.integers(len(car_colours))], np.float32),
        shirt_colour=np.array(shirt_colours[rng.integers(len(shirt_colours))], np.float32),
        sign_depth=rng.uniform(25.0, 45.0),
        pedestrian_start=rng.uniform(0.3, 1.0),
    )


@dataclass(frozen=True)
class _Camera:
    width: int
    height: int
    focal_px: float
    horizon_y: int
    lateral_offset_m: float

    def project(self, x_m: float, height_m: float, depth_m: float) -> tuple[float, float]:
        """Image (u, v) of a world point: x to the right, height above the ground, depth ahead."""
        u = self.width / 2.0 + self.focal_px * (x_m - self.lateral_offset_m) / depth_m
        v = self.horizon_y + self.focal_px * (CAMERA_HEIGHT_M - height_m) / depth_m
        return u, v

    def pixels(self, metres: float, depth_m: float) -> float:
        return self.focal_px * metres / depth_m


# ----------------------------------------------------------------------------------------------
# Drawing primitives (in place on float32 HxWx3 images)
# ----------------------------------------------------------------------------------------------


def _pixel_span(start: float, stop: float, limit: int) -> tuple[int, int]:
    """Integer [a, b) covering [start, stop), at least one pixel wide, clipped to [0, limit)."""
    a = int(math.floor(start))
    b = max(a + 1, int(math.ceil(stop)))
    return max(a, 0), min(b, limit)


def _fill_rect(image: np.ndarray, x0: float, x1: float, y0: float, y1: float, colour: np.ndarray) -> None:
    h, w = image.shape[:2]
    a, b = _pixel_span(x0, x1, w)
    c, d = _pixel_span(y0, y1, h)
    if a < b and c < d:
        image[c:d, a:b] = colour


def _add_glow(image: np.ndarray, x: float, y: float, radius: float, colour: np.ndarray, strength: float) -> None:
    """Additive Gaussian light blob; separable so it costs one small outer product."""
    h, w = image.shape[:2]
    radius = max(radius, 0.8)
    reach = 3.0 * radius
    a, b = _pixel_span(x - reach, x + reach, w)
    c, d = _pixel_span(y - reach, y + reach, h)
    if a >= b or c >= d:
        return
    gx = np.exp(-0.5 * ((np.arange(a, b, dtype=np.float32) + 0.5 - x) / radius) ** 2)
    gy = np.exp(-0.5 * ((np.arange(c, d, dtype=np.float32) + 0.5 - y) / radius) ** 2)
    image[c:d, a:b] += (strength * gy[:, None, None] * gx[None, :, None]) * colour


def _lerp_into(target: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> None:
    """target += weight * (colour - target), with weight broadcast over the colour channels."""
    target += weight[..., None] * (colour - target)


def _lerp_row_band(target: np.ndarray, colour: np.ndarray, row_weight: np.ndarray, lateral: np.ndarray) -> None:
    """_lerp_into restricted to the rows a road-crossing band touches (usually a handful)."""
    rows = np.flatnonzero(row_weight)
    if rows.size == 0:
        return
    lo, hi = rows[0], rows[-1] + 1
    band_colour = colour[lo:hi] if colour.ndim == 3 else colour
    _lerp_into(target[lo:hi], band_colour, row_weight[lo:hi, None] * lateral[lo:hi])


def _line_cover(x: np.ndarray, centre: float, half_width: float, metres_per_px: np.ndarray) -> np.ndarray:
    """Antialiased coverage (0..1) of a painted line on the ground."""
    return np.clip((half_width - np.abs(x - centre)) / metres_per_px + 0.5, 0.0, 1.0)


def _band_cover(x: np.ndarray, lo: float, hi: float, metres_per_px: np.ndarray) -> np.ndarray:
    return np.clip(np.minimum(x - lo, hi - x) / metres_per_px + 0.5, 0.0, 1.0)


def _row_fraction_in(depths: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fraction of each row's sub-samples whose ground depth lies in [lo, hi)."""
    return ((depths >= lo) & (depths < hi)).mean(axis=1, dtype=np.float32)


def _periodic_fraction(depths: np.ndarray, period: float, length: float, phase: float) -> np.ndarray:
    return (np.mod(depths + phase, period) < length).mean(axis=1, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# The clip renderer
# ----------------------------------------------------------------------------------------------


class _ClipRenderer:
    """Precomputes a clip's static layers once, then draws frame k cheaply."""

    def __init__(self, scene: SceneSpec, width: int, height: int, fps: int, duration_s: float, seed: int):
        self.scene = scene
        self.fps = fps
        self.rng = np.random.default_rng(seed)
        self.look = _look_for(scene)
        self.layout = _road_layout(scene)
        self.camera = self._make_camera(width, height)
        self.jitter = _random_jitter(self.rng)
        self.motion, self.crossing_m = _motion_and_crossing(scene, duration_s, self.jitter.lead_gap)
        self._build_ground_grid()
        self.sky = self._sky_layer()
        self.albedo = self._static_albedo()
        self.crossroad_albedo = self._crossroad_albedo()
        self.static_light = self._static_light()
        self.fog_weight = self._ground_fog_weight()
        self.particles = self._particles()
        self.contrast_pivot: float | None = None  # fixed from frame 0 so grading never flickers

    # -- setup -------------------------------------------------------------------------------

    def _make_camera(self, width: int, height: int) -> _Camera:
        horizon = int(round(height * 0.44 + self.rng.uniform(-0.02, 0.02) * height))
        return _Camera(width, height, 0.62 * width, horizon, float(self.rng.uniform(-0.35, 0.35)))

    def _build_ground_grid(self) -> None:
        cam = self.camera
        rows = np.arange(cam.horizon_y, cam.height, dtype=np.float32)
        sub = rows[:, None] + np.array([0.125, 0.375, 0.625, 0.875], np.float32)[None, :]
        self.depth_sub = np.minimum(cam.focal_px * CAMERA_HEIGHT_M / (sub - cam.horizon_y), MAX_GROUND_DISTANCE_M)
        self.depth = self.depth_sub.mean(axis=1)
        self.metres_per_px = (self.depth / cam.focal_px)[:, None]
        columns = np.arange(cam.width, dtype=np.float32) + 0.5 - cam.width / 2.0
        self.x = columns[None, :] * self.metres_per_px + cam.lateral_offset_m

    def _sky_layer(self) -> np.ndarray:
        cam, look = self.camera, self.look
        t = (np.arange(cam.horizon_y, dtype=np.float32) + 0.5) / max(cam.horizon_y, 1)
        gradient = t[:, None] ** 0.8
        sky = look.sky_top * (1 - gradient) + look.sky_horizon * gradient
        sky = np.repeat(sky[:, None, :], cam.width, axis=1).astype(np.float32)
        if self.scene.weather == PARTLY_CLOUDY:
            self._add_clouds(sky)
        if self.scene.weather == CLEAR and self.scene.is_night:
            self._add_stars(sky)
        if self.look.sun and self.scene.weather in (CLEAR, PARTLY_CLOUDY):
            _add_glow(
                sky,
                cam.width * self.rng.uniform(0.65, 0.9),
                cam.horizon_y * 0.25,
                cam.width * 0.05,
                np.array([255.0, 250.0, 220.0], np.float32),
                1.0,
            )
        return sky

    def _add_clouds(self, sky: np.ndarray) -> None:
        h, w = sky.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cover = np.zeros((h, w), np.float32)
        for _ in range(self.rng.integers(4, 7)):
            cx, cy = self.rng.uniform(0, w), self.rng.uniform(0.1 * h, 0.75 * h)
            for _ in range(4):
                px, py = cx + self.rng.uniform(-0.06, 0.06) * w, cy + self.rng.uniform(-0.05, 0.05) * h
                rx, ry = self.rng.uniform(0.04, 0.08) * w, self.rng.uniform(0.05, 0.1) * h
                cover += np.exp(-(((xx - px) / rx) ** 2 + ((yy - py) / ry) ** 2))
        colour = np.array([42.0, 42.0, 48.0] if self.scene.is_night else [248.0, 248.0, 250.0], np.float32)
        _lerp_into(sky, colour, np.clip(1.4 * cover, 0.0, 0.95))

    def _add_stars(self, sky: np.ndarray) -> None:
        h, w = sky.shape[:2]
        n = int(w * h / 400)
        ys, xs = self.rng.integers(0, max(h - 8, 1), n), self.rng.integers(0, w, n)
        sky[ys, xs] = np.array([200.0, 200.0, 215.0], np.float32)

    def _static_albedo(self) -> np.ndarray:
        """Ground colour that does not move with the ego: terrain, asphalt and continuous lines."""
        x, mpp, lay, surface = self.x, self.metres_per_px, self.layout, self.scene.road_surface
        terrain = _SNOW if surface == "snowy" else _GRASS
        albedo = np.broadcast_to(terrain, x.shape + (3,)).astype(np.float32)
        road = _band_cover(x, lay.left_edge - 0.5, lay.right_edge + 0.5, mpp)
        if not self.scene.two_way:
            _lerp_into(albedo, _CONCRETE, _band_cover(x, lay.left_edge - 2.5, lay.left_edge - 0.5, mpp))
        _lerp_into(albedo, self._asphalt_colour(), road)
        if surface == "snowy":
            self._add_snow_cover(albedo, road)
        line_strength = 0.45 if surface == "snowy" else 1.0
        for centre in lay.solid_white:
            _lerp_into(albedo, _WHITE, line_strength * _line_cover(x, centre, LINE_HALF_WIDTH_M, mpp))
        for centre in lay.yellow:
            _lerp_into(albedo, _YELLOW, line_strength * _line_cover(x, centre, 0.1, mpp))
        self.road_cover = road
        dash_cover = sum((_line_cover(x, c, LINE_HALF_WIDTH_M, mpp) for c in lay.dashed_white), np.zeros_like(x))
        dash_cover *= line_strength
        # Dashes cover few pixels: keep them sparse so each frame touches only those.
        self.dash_rows, self.dash_cols = np.nonzero(dash_cover)
        self.dash_weight = dash_cover[self.dash_rows, self.dash_cols]
        return albedo

    def _asphalt_colour(self) -> np.ndarray:
        colour = np.array(_ASPHALT[self.scene.road_surface], np.float32)
        if self.scene.road_surface != "wet":
            return colour
        # A wet road mirrors the sky, more so at grazing angles far ahead.
        sheen = 0.6 * np.clip(self.depth / 60.0, 0.0, 1.0)[:, None, None]
        return colour + sheen * (self.look.sky_horizon - colour)

    def _add_snow_cover(self, albedo: np.ndarray, road: np.ndarray) -> None:
        x, mpp, lay = self.x, self.metres_per_px, self.layout
        inside = np.minimum(x - (lay.left_edge - 0.5), (lay.right_edge + 0.5) - x)
        edge_snow = np.clip(1.0 - inside / 1.6, 0.0, 1.0) * road
        _lerp_into(albedo, _SNOW, np.maximum(edge_snow, 0.35 * road))
        tracks = sum(
            (_line_cover(x, c + side, 0.15, mpp) for c in lay.lane_centres for side in (-0.8, 0.8)), np.zeros_like(x)
        )
        _lerp_into(albedo, np.array(_ASPHALT["wet"], np.float32), 0.3 * np.clip(tracks, 0, 1) * road)

    def _crossroad_albedo(self) -> np.ndarray:
        """The cross street of an intersection: plain asphalt across the whole view."""
        asphalt = np.broadcast_to(self._asphalt_colour(), self.x.shape + (3,)).astype(np.float32)
        if self.scene.road_surface == "snowy":
            _lerp_into(asphalt, _SNOW, np.full(self.x.shape, 0.4, np.float32))
        return asphalt

    def _static_light(self) -> np.ndarray:
        """Ambient light plus the headlight cone, which moves with the camera."""
        light = np.full(self.x.shape, self.look.ambient, np.float32)
        if self.look.headlights > 0:
            depth = self.depth[:, None]
            spread = 0.3 * depth + 1.2
            cone = np.exp(-(((self.x - self.camera.lateral_offset_m) / spread) ** 2)) * np.exp(-depth / 24.0)
            light += self.look.headlights * cone
        return light

    def _ground_fog_weight(self) -> np.ndarray | None:
        if not math.isfinite(self.look.fog_distance_m):
            return None
        return self.look.fog_weight(self.depth)[:, None, None].astype(np.float32)

    def _particles(self) -> dict[str, Any] | None:
        """Rain streaks or snowflakes: start positions and per-frame velocity (pixels)."""
        w, h = self.camera.width, self.camera.height
        density = {LIGHT_RAIN: 0.0008, HEAVY_RAIN: 0.0025, LIGHT_SNOW: 0.0025}.get(self.scene.weather)
        if density is None:
            return None
        n = int(density * w * h)
        rain = self.scene.weather != LIGHT_SNOW
        return {
            "x": self.rng.uniform(0, w, n).astype(np.float32),
            "y": self.rng.uniform(0, h, n).astype(np.float32),
            "vx": (-0.09 * h if rain else 0.0),
            "vy": (0.45 * h if rain else 0.03 * h) * self.rng.uniform(0.8, 1.2, n).astype(np.float32),
            "length": max(4, int(0.05 * h)) if rain else 0,
            "sway": self.rng.uniform(0, 2 * math.pi, n).astype(np.float32),
        }

    # -- per frame ---------------------------------------------------------------------------

    def frame(self, index: int) -> np.ndarray:
        t = index / self.fps
        travelled = self.motion.travelled(t)
        cam = self.camera
        image = np.empty((cam.height, cam.width, 3), np.float32)
        image[: cam.horizon_y] = self.sky
        image[cam.horizon_y :] = self._ground(travelled)
        for _, draw in sorted(self._objects(t, travelled), key=lambda item: -item[0]):
            draw(image)
        self._draw_particles(image, index)
        return self._grade(image)

    def _ground(self, travelled: float) -> np.ndarray:
        albedo = self.albedo.copy()
        depths = self.depth_sub + travelled  # distance along the road, fixed to the world
        if self.dash_rows.size:
            dashes = _periodic_fraction(depths, DASH_PERIOD_M, DASH_LENGTH_M, self.jitter.dash_phase)
            weight = self.dash_weight * dashes[self.dash_rows]
            pixels = albedo[self.dash_rows, self.dash_cols]
            albedo[self.dash_rows, self.dash_cols] = pixels + weight[:, None] * (_WHITE - pixels)
        if self.crossing_m is not None:
            self._paint_crossing(albedo, self.depth_sub - (self.crossing_m - travelled))
        if self.scene.road_surface == "wet":
            self._paint_puddles(albedo, travelled)
        light = self.static_light.copy()
        if self.look.sun:
            self._cast_shadows(light, depths)
        if self.look.streetlights:
            self._add_light_pools(light, depths)
        ground = albedo * light[..., None]
        if self.fog_weight is not None:
            ground += self.fog_weight * (self.look.fog_colour - ground)
        return ground

    @cached_property
    def _zebra_cover(self) -> np.ndarray:
        return (np.mod(self.x - self.layout.right_edge, 1.2) < 0.6) * self.road_cover

    @cached_property
    def _ego_side_cover(self) -> np.ndarray:
        return _band_cover(self.x, self.layout.centre, self.layout.right_edge, self.metres_per_px)

    def _paint_crossing(self, albedo: np.ndarray, beyond_line: np.ndarray) -> None:
        """Stop line, zebra crosswalk and (at a signal) the cross street, relative to the line."""
        _lerp_row_band(albedo, _WHITE, 0.9 * _row_fraction_in(beyond_line, 1.0, 4.0), self._zebra_cover)
        if self.scene.traffic_light is None:
            return
        _lerp_row_band(albedo, _WHITE, _row_fraction_in(beyond_line, 0.0, 0.6), self._ego_side_cover)
        _lerp_row_band(albedo, self.crossroad_albedo, _row_fraction_in(beyond_line, 4.5, 16.5), np.ones_like(self.x))

    def _paint_puddles(self, albedo: np.ndarray, travelled: float) -> None:
        """Sky-coloured puddles fixed to the road, so they stream past like the markings."""
        rows, cols, across = self._puddle_lanes
        phase_z = self.jitter.puddle_phase[1]
        pattern = across * np.sin(0.3 * (self.depth[rows] + travelled) + phase_z)
        hit = pattern > 0.7
        rows, cols = rows[hit], cols[hit]
        pixels = albedo[rows, cols]
        weight = 0.75 * self.road_cover[rows, cols]
        albedo[rows, cols] = pixels + weight[:, None] * (0.9 * self.look.sky_horizon - pixels)

    @cached_property
    def _puddle_lanes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, cols = np.nonzero(self.road_cover > 0)
        return rows, cols, np.sin(0.9 * self.x[rows, cols] + self.jitter.puddle_phase[0])

    def _cast_shadows(self, light: np.ndarray, depths: np.ndarray) -> None:
        """Hard shadows of roadside trees across the right of the road: the direct-sunlight cue."""
        rows = _periodic_fraction(depths, SHADOW_SPACING_M, 4.0, self.jitter.shadow_phase)
        lateral = (self.x > self.layout.right_edge - 6.0).astype(np.float32)
        light *= 1.0 - 0.6 * rows[:, None] * lateral

    def _add_light_pools(self, light: np.ndarray, depths: np.ndarray) -> None:
        offset = np.mod(depths - self.jitter.pole_phase, POLE_SPACING_M)
        nearest = np.minimum(offset, POLE_SPACING_M - offset)
        rows = np.exp(-0.5 * (nearest / 6.0) ** 2).mean(axis=1)
        light += 1.3 * rows[:, None] * self._pool_lateral

    @cached_property
    def _pool_lateral(self) -> np.ndarray:
        """Sideways falloff of the light pools under both rows of streetlamps (lamps overhang the road)."""
        return sum(
            np.exp(-0.5 * ((self.x - (x_pole - math.copysign(1.5, x_pole))) / 4.0) ** 2)
            for x_pole in self._pole_lines()
        )

    def _pole_lines(self) -> tuple[float, ...]:
        lay = self.layout
        return (lay.right_edge + 1.2, lay.left_edge - 1.2)

    # -- objects ------------------------------------------------------------------------------

    def _objects(self, t: float, travelled: float) -> Iterator[tuple[float, Callable[[np.ndarray], None]]]:
        """(depth, draw function) for everything standing on the road, so they can be drawn far to near."""
        if self.scene.lighting != NIGHT_DARK:
            yield from self._poles(travelled)
        if self.scene.speed_limit_mph is not None:
            depth = self.jitter.sign_depth - travelled
            yield depth, lambda im, d=depth: self._draw_sign(im, d, _REGULATORY_SIGN)
        if self.crossing_m is not None:
            line = self.crossing_m - travelled
            if self.scene.traffic_light is not None:
                yield line + 16.0, lambda im, d=line + 16.0: self._draw_traffic_light(im, d)
            elif self.scene.has_midblock_crosswalk:
                yield line - 1.5, lambda im, d=line - 1.5: self._draw_sign(im, d, _WARNING_SIGN)
            if self.scene.has_pedestrian:
                yield line + 2.5, lambda im, d=line + 2.5: self._draw_pedestrian(im, d, t)
        if self.scene.has_lead_vehicle:
            gap = self.jitter.lead_gap + 0.4 * math.sin(1.3 * t)
            yield gap, lambda im: self._draw_lead_vehicle(im, gap, self.motion.braking(t))

    def _object_light(self, depth: float) -> float:
        light = self.look.ambient + self.look.headlights * math.exp(-depth / 24.0)
        return light + (0.6 if self.look.streetlights else 0.0)

    def _fogged(self, colour: np.ndarray, depth: float) -> np.ndarray:
        if not math.isfinite(self.look.fog_distance_m):
            return colour
        weight = float(self.look.fog_weight(depth))
        return colour + weight * (self.look.fog_colour - colour)

    def _emission(self, depth: float) -> float:
        """How much of a lamp's glow survives the fog."""
        if not math.isfinite(self.look.fog_distance_m):
            return 1.0
        return 0.35 + 0.65 * math.exp(-depth / self.look.fog_distance_m)

    def _poles(self, travelled: float) -> Iterator[tuple[float, Callable[[np.ndarray], None]]]:
        first = math.ceil((travelled + 2.0 - self.jitter.pole_phase) / POLE_SPACING_M)
        for k in range(first, first + 8):
            depth = self.jitter.pole_phase + POLE_SPACING_M * k - travelled
            for x_pole in self._pole_lines():
                yield depth, lambda im, d=depth, xp=x_pole: self._draw_pole(im, xp, d)

    def _draw_pole(self, image: np.ndarray, x_pole: float, depth: float) -> None:
        cam = self.camera
        u, v_foot = cam.project(x_pole, 0.0, depth)
        _, v_top = cam.project(x_pole, 8.0, depth)
        half = max(cam.pixels(0.15, depth), 0.5)
        colour = self._fogged(_POLE_GREY * self._object_light(depth), depth)
        _fill_rect(image, u - half, u + half, v_top, v_foot, colour)
        if self.look.streetlights:
            lamp_u, lamp_v = cam.project(x_pole - math.copysign(1.5, x_pole), 8.0, depth)
            radius = max(cam.pixels(0.6, depth), 1.5)
            _add_glow(image, lamp_u, lamp_v, radius, _STREETLAMP, 1.4 * self._emission(depth))
            _add_glow(image, lamp_u, lamp_v, 3 * radius, _STREETLAMP, 0.25 * self._emission(depth))

    def _draw_sign(self, image: np.ndarray, depth: float, colour: np.ndarray) -> None:
        if depth < 2.0:
            return
        cam = self.camera
        x_sign = self.layout.right_edge + 1.5
        u, v_foot = cam.project(x_sign, 0.0, depth)
        _, v_bottom = cam.project(x_sign, 2.0, depth)
        _, v_top = cam.project(x_sign, 3.3, depth)
        half = max(cam.pixels(0.6, depth), 2.0)
        light = max(self._object_light(depth), 0.35)  # retroreflective
        _fill_rect(image, u - 1, u + 1, v_bottom, v_foot, self._fogged(_POLE_GREY * light, depth))
        _fill_rect(image, u - half - 1, u + half + 1, v_top - 1, v_bottom + 1, self._fogged(_BLACK, depth))
        _fill_rect(image, u - half, u + half, v_top, v_bottom, self._fogged(colour * light, depth))

    def _draw_traffic_light(self, image: np.ndarray, depth: float) -> None:
        """Mast, dark box and the lit lamp (exaggerated in size so a small model can see the colour)."""
        if depth < 2.0:
            return
        cam, lay = self.camera, self.layout
        x_mast = lay.right_edge + 1.0
        x_box = (lay.right_edge + lay.centre) / 2.0
        dark = self._fogged(np.array([35.0, 35.0, 38.0], np.float32) * max(self._object_light(depth), 0.3), depth)
        u_mast, v_foot = cam.project(x_mast, 0.0, depth)
        u_box, v_arm = cam.project(x_box, 6.2, depth)
        half_pole = max(cam.pixels(0.15, depth), 1.0)
        _fill_rect(image, u_mast - half_pole, u_mast + half_pole, v_arm, v_foot, dark)
        _fill_rect(image, min(u_box, u_mast), max(u_box, u_mast), v_arm - half_pole, v_arm + half_pole, dark)
        box_w = max(cam.pixels(0.9, depth), 9.0)
        box_h = 3.0 * box_w
        _fill_rect(image, u_box - box_w / 2, u_box + box_w / 2, v_arm, v_arm + box_h, _SIGNAL_HOUSING)
        colour = self.scene.traffic_light
        for slot, name in enumerate(("red", "yellow", "green")):
            lamp_v = v_arm + box_h * (slot + 0.5) / 3.0
            if name == colour:
                strength = self._emission(depth)
                _add_glow(image, u_box, lamp_v, 0.32 * box_w, _LAMP_COLOURS[name], 1.6 * strength)
                _add_glow(image, u_box, lamp_v, 1.1 * box_w, _LAMP_COLOURS[name], 0.45 * strength)
            else:
                _fill_rect(
                    image,
                    u_box - box_w * 0.2,
                    u_box + box_w * 0.2,
                    lamp_v - box_w * 0.2,
                    lamp_v + box_w * 0.2,
                    np.array([45.0, 45.0, 45.0], np.float32),
                )

    def _draw_lead_vehicle(self, image: np.ndarray, depth: float, braking: bool) -> None:
        cam = self.camera
        u, v_ground = cam.project(0.0, 0.0, depth)
        _, v_roof = cam.project(0.0, 1.45, depth)
        _, v_window = cam.project(0.0, 1.05, depth)
        half = cam.pixels(0.9, depth)
        light = self._object_light(depth)
        body = self._fogged(self.jitter.car_colour * light, depth)
        glass = self._fogged(np.array([70.0, 80.0, 92.0], np.float32) * light, depth)
        _fill_rect(image, u - half * 1.1, u + half * 1.1, v_ground - 2, v_ground + 2, self._fogged(_BLACK, depth))
        _fill_rect(image, u - half, u + half, v_roof, v_ground, body)
        _fill_rect(image, u - half * 0.8, u + half * 0.8, v_roof + 1, v_window, glass)
        lamp_on = braking or self.scene.is_night or self.scene.weather in (HEAVY_RAIN, DENSE_FOG)
        _, v_lamp = cam.project(0.0, 0.8, depth)
        for side in (-1, 1):
            lamp_u = u + side * half * 0.78
            _fill_rect(
                image,
                lamp_u - half * 0.15,
                lamp_u + half * 0.15,
                v_lamp - half * 0.08,
                v_lamp + half * 0.08,
                np.array([190.0, 25.0, 25.0], np.float32),
            )
            if lamp_on:
                strength = (1.0 if braking else 0.5) * self._emission(depth)
                _add_glow(image, lamp_u, v_lamp, half * 0.18, _LAMP_COLOURS["red"], strength)

    def _draw_pedestrian(self, image: np.ndarray, depth: float, t: float) -> None:
        """A walker crossing from the right kerb toward the left, legs scissoring."""
        if depth < 2.0:
            return
        cam, lay = self.camera, self.layout
        x = lay.right_edge + self.jitter.pedestrian_start - 1.4 * t
        u, v_ground = cam.project(x, 0.0, depth)
        _, v_hip = cam.project(x, 0.9, depth)
        _, v_shoulder = cam.project(x, 1.45, depth)
        _, v_head = cam.project(x, 1.75, depth)
        half = cam.pixels(0.25, depth)
        light = max(self._object_light(depth), 0.3)
        shirt = self._fogged(self.jitter.shirt_colour * light, depth)
        trousers = self._fogged(np.array([40.0, 45.0, 70.0], np.float32) * light, depth)
        skin = self._fogged(np.array([200.0, 160.0, 130.0], np.float32) * light, depth)
        stride = half * 0.8 * math.sin(6.0 * t)
        _fill_rect(image, u - half * 0.6 + stride, u - half * 0.05 + stride, v_hip, v_ground, trousers)
        _fill_rect(image, u + half * 0.05 - stride, u + half * 0.6 - stride, v_hip, v_ground, trousers)
        _fill_rect(image, u - half, u + half, v_shoulder, v_hip, shirt)
        _fill_rect(image, u - half * 0.5, u + half * 0.5, v_head, v_shoulder, skin)

    # -- weather and grading ------------------------------------------------------------------

    def _draw_particles(self, image: np.ndarray, index: int) -> None:
        p = self.particles
        if p is None:
            return
        h, w = image.shape[:2]
        night = self.scene.is_night
        if p["length"]:
            steps = np.arange(p["length"], dtype=np.float32)
            xs = (p["x"] + index * p["vx"]) % w
            ys = (p["y"] + index * p["vy"]) % h
            xs = (xs[:, None] - 0.2 * steps[None, :]).astype(np.int32).ravel()
            ys = (ys[:, None] + steps[None, :]).astype(np.int32).ravel()
            colour = np.array([150.0, 155.0, 165.0] if night else [215.0, 218.0, 225.0], np.float32)
            alpha = 0.45
        else:
            xs = ((p["x"] + 0.01 * w * np.sin(p["sway"] + 0.7 * index)) % w).astype(np.int32)
            ys = ((p["y"] + index * p["vy"]) % h).astype(np.int32)
            xs = np.concatenate([xs, xs + 1, xs, xs + 1])
            ys = np.concatenate([ys, ys, ys + 1, ys + 1])
            colour = np.array([170.0, 172.0, 180.0] if night else [250.0, 250.0, 252.0], np.float32)
            alpha = 0.85
        keep = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        xs, ys = xs[keep], ys[keep]
        image[ys, xs] += alpha * (colour - image[ys, xs])

    def _grade(self, image: np.ndarray) -> np.ndarray:
        """Contrast (high in sun, flat in dull light), per-clip tone jitter, then 8-bit."""
        contrast = self.look.contrast
        if contrast != 1.0:
            if self.contrast_pivot is None:
                self.contrast_pivot = round(float(image.mean(dtype=np.float64)), 2)
            image = self.contrast_pivot + contrast * (image - self.contrast_pivot)
        image *= self.jitter.tone
        return np.clip(image, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A fresh temp path next to `path` that replaces it only if the block succeeds.

    The temp file is created by the writer (not mkstemp), so it gets the usual umask permissions.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# One thread: x264's output depends on the thread count. No B-frames: with B-frames and mb-tree this
# x264 build gave different bytes for identical input now and then (depending on buffer addresses).
_X264_OPTIONS = {"crf": "23", "preset": "veryfast", "threads": "1", "x264-params": "bframes=0"}


def _frame_count(duration_s: float, fps: int) -> int:
    return max(1, int(round(duration_s * fps)))


def render_clip(
    scene: SceneSpec,
    path: Path,
    *,
    duration_s: float = 4.0,
    fps: int = 10,
    width: int = 448,
    height: int = 252,
    seed: int = 0,
) -> None:
    """Draw `scene` and write it as an H.264 (libx264, yuv420p) mp4, atomically.

    `seed` drives only the per-clip jitter (camera pose, colours, particle positions, phases).
    """
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}")
    renderer = _ClipRenderer(scene, width, height, fps, duration_s, seed)
    with _atomic_path(Path(path)) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.time_base = Fraction(1, fps)
            stream.options = dict(_X264_OPTIONS)
            for index in range(_frame_count(duration_s, fps)):
                frame = av.VideoFrame.from_ndarray(renderer.frame(index), format="rgb24")
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))


def _write_label(label: dict[str, Any], path: Path) -> None:
    with _atomic_path(path) as tmp:
        with open(tmp, "x", encoding="utf-8") as f:
            json.dump(label, f, indent=2)


def clip_id_for(seed: int, index: int) -> str:
    return f"syn-{seed:04d}-{index:04d}"


def _balanced_choice(values: tuple[str, ...], seed: int, index: int, salt: str) -> str:
    """Cycle through shuffled copies of `values`, so every block of len(values) clips covers each once.

    Depends only on (seed, index), so growing a batch never changes clips already written.
    """
    block_rng = random.Random(f"avdag-synthetic:{salt}:{seed}:{index // len(values)}")
    order = list(values)
    block_rng.shuffle(order)
    return order[index % len(values)]


def plan_clip(seed: int, index: int) -> tuple[str, SceneSpec, dict[str, Any]]:
    """Clip id, scene and label of clip `index` of a batch, without rendering anything."""
    rng = random.Random(f"avdag-synthetic:clip:{seed}:{index}")
    weather = _balanced_choice(SCENE_WEATHERS, seed, index, "weather")
    lighting = _balanced_choice(LIGHTING, seed, index, "lighting")
    scene = _scene_with(rng, weather, lighting)
    return clip_id_for(seed, index), scene, label_for_scene(scene, rng)


def _render_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7_919) % (2**31)


def _video_matches(path: Path, frames: int, fps: int, width: int, height: int) -> bool:
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return (stream.frames, stream.average_rate, stream.width, stream.height) == (frames, fps, width, height)
    except (av.error.FFmpegError, IndexError, OSError):
        return False


def generate_sample_batch(
    root: Path,
    batch: str,
    n_clips: int,
    *,
    seed: int = 0,
    duration_s: float = 4.0,
    fps: int = 10,
) -> list[str]:
    """Write `n_clips` labelled synthetic clips under root/batch; returns their ids.

    Deterministic in `seed`. Idempotent: a clip whose label file already holds the same label and
    whose video has the requested geometry is left alone; anything else is (re)written atomically,
    video first, so a present label means a complete clip.
    """
    batch_dir = Path(root) / batch
    width, height = 448, 252
    clip_ids = []
    for index in range(n_clips):
        clip_id, scene, label = plan_clip(seed, index)
        video_path = batch_dir / "videos" / f"{clip_id}{VIDEO_SUFFIX}"
        label_path = batch_dir / "metas" / f"{clip_id}{LABEL_SUFFIX}"
        label_text = json.dumps(label, indent=2)
        up_to_date = (
            label_path.is_file()
            and label_path.read_text(encoding="utf-8") == label_text
            and _video_matches(video_path, _frame_count(duration_s, fps), fps, width, height)
        )
        if not up_to_date:
            render_clip(
                scene,
                video_path,
                duration_s=duration_s,
                fps=fps,
                width=width,
                height=height,
                seed=_render_seed(seed, index),
            )
            _write_label(label, label_path)
        clip_ids.append(clip_id)
    return clip_ids
