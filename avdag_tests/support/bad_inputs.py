"""A corpus of bad (and a few good) inputs for one landing-zone batch.

`build_corpus(batch_dir)` writes one batch folder and returns a `Corpus`: a dict
{path relative to the batch folder: expected outcome} for every data file written (markers
excluded), where the outcome is "clip" or the quarantine `check` ingest must report. The Corpus
also carries the IngestLimits to ingest it with (a small `max_size_bytes`, so the "oversized"
clip is over it and nothing else is) and, per file, substrings its quarantine reason must contain.

`S3_ONLY` lists keys a local filesystem cannot hold (or would not produce), to be put straight
into a bucket next to an uploaded corpus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avdag.core.ingest.landing import LABEL_SUFFIX, READY_MARKER, VIDEO_SUFFIX
from avdag.core.ingest.upload_batch import IngestLimits
from avdag.demo.sample_data import REAL_CLIP_DIR
from avdag_tests.support.media import cut_tail, unique_copy

REAL_DIR = REAL_CLIP_DIR
REAL_LABEL_PATH = REAL_DIR / "solidWhiteRight.label.json"
REAL_VIDEO_PATH = REAL_DIR / f"solidWhiteRight{VIDEO_SUFFIX}"

LAYOUT_REASON = f"not a <id>{VIDEO_SUFFIX} directly under videos/"
# Clip ids that sort in this order matter: the first registration of some content wins.
DUPLICATE_SOURCE, DUPLICATE_COPY = "good_a", "zz_copy_of_good_a"
UNICODE_ID = "caf\u00e9_clip_\u96e8"  # NFC 'é' and a CJK character
SPACE_ID = "clip with space"
CUT_UPLOAD = "cut_upload"
CUT_UPLOAD_REASON = ("truncated: the stream ends at", "the container declares 8.84s")


# --- media --------------------------------------------------------------------------------------


def encode_clip(
    path: Path,
    *,
    seconds: float = 1.5,
    fps: int = 10,
    width: int = 128,
    height: int = 72,
    noise: bool = False,
    seed: int = 0,
) -> Path:
    """An H.264 (libx264, yuv420p) MP4 whose frames change over time; `noise` makes it big."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(round(seconds * fps)):
            if noise:
                rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            else:
                rgb = np.full((height, width, 3), (index * 23) % 256, dtype=np.uint8)
                rgb[:, : width // 2, 1] = 200
                rgb[: height // 3, :, 2] = (index * 41) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def encode_audio_only(path: Path, *, seconds: float = 1.5, rate: int = 44100) -> Path:
    """An MP4 holding one AAC audio stream (a tone) and no video stream."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples, n = 1024, int(seconds * rate)
        for start in range(0, n, samples):
            t = (np.arange(start, start + samples) / rate).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(
                (0.2 * np.sin(2 * np.pi * 440 * t))[None, :], format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def real_label() -> dict:
    return json.loads(REAL_LABEL_PATH.read_text(encoding="utf-8"))


# --- the corpus ---------------------------------------------------------------------------------


class Corpus(dict):
    """{relative path: "clip" | expected quarantine check}, plus how to ingest and judge it."""

    limits: IngestLimits
    reasons: dict[str, tuple[str, ...]]  # relative path -> substrings its quarantine reason must contain
    labels: dict[str, str | None]  # clip rel -> label rel expected on its row (None: unlabelled)
    batch_dir: Path


@dataclass(frozen=True)
class S3OnlyInput:
    rel: str  # the key below the batch prefix, verbatim
    data: bytes
    check: str
    reason: str


def s3_only_inputs(clip: bytes) -> list[S3OnlyInput]:
    """Keys no local folder can hold: '..' segments (a path escape attempt) and a "folder" object."""
    return [
        # A valid video whose key climbs out of videos/ and the batch: must never be downloaded
        # (and so never written anywhere), only quarantined.
        S3OnlyInput(f"videos/../../escape{VIDEO_SUFFIX}", unique_copy(clip, "escape-1"), "layout", LAYOUT_REASON),
        S3OnlyInput(
            f"videos/../../../../../../tmp/escape_abs{VIDEO_SUFFIX}",
            unique_copy(clip, "escape-2"),
            "layout",
            LAYOUT_REASON,
        ),
        S3OnlyInput(f"videos/./dot_segment{VIDEO_SUFFIX}", unique_copy(clip, "escape-3"), "layout", LAYOUT_REASON),
        # What the S3 console's "Create folder" writes: a zero-byte object whose key ends in '/'.
        S3OnlyInput("metas/", b"", "layout", LAYOUT_REASON),
    ]


def build_corpus(batch_dir: Path, *, ready: bool = True) -> Corpus:
    """Write the batch folder (markers last) and return what ingest must make of every file."""
    batch_dir = Path(batch_dir)
    batch = batch_dir.name
    (batch_dir / "videos").mkdir(parents=True, exist_ok=True)
    (batch_dir / "metas").mkdir(exist_ok=True)
    scratch = batch_dir.parent / f".{batch}.scratch"
    scratch.mkdir(exist_ok=True)
    base = encode_clip(scratch / "base.mp4").read_bytes()
    short = encode_clip(scratch / "short.mp4", seconds=0.3).read_bytes()
    big = encode_clip(scratch / "big.mp4", width=320, height=180, noise=True).read_bytes()
    audio = encode_audio_only(scratch / "audio.mp4").read_bytes()
    for tmp in scratch.iterdir():
        tmp.unlink()
    scratch.rmdir()

    corpus = Corpus()
    corpus.reasons, corpus.labels, corpus.batch_dir = {}, {}, batch_dir

    def write(rel: str, data: bytes, outcome: str, *reason: str) -> str:
        path = batch_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        assert rel not in corpus, rel
        corpus[rel] = outcome
        if outcome != "clip":
            corpus.reasons[rel] = reason
        return rel

    def video(clip_id: str, data: bytes, outcome: str, *reason: str) -> str:
        return write(f"videos/{clip_id}{VIDEO_SUFFIX}", data, outcome, *reason)

    def label(clip_id: str, value, outcome: str, *reason: str) -> str:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)
        return write(f"metas/{clip_id}{LABEL_SUFFIX}", text.encode("utf-8"), outcome, *reason)

    def good(clip_id: str, label_value=None) -> str:
        rel = video(clip_id, unique_copy(base, clip_id), "clip")
        corpus.labels[rel] = label(clip_id, label_value, "clip") if label_value is not None else None
        return rel

    # Good clips with valid labels (the real label, and spellings the schema must canonicalize).
    good(DUPLICATE_SOURCE, real_label())
    relabel = real_label() | {"weather": "overcast", "lighting": "Daytime (low\u2011contrast daylight)"}
    good("good_b", relabel)
    good("good_c", real_label() | {"rule_violation": True, "interesting_scenario": "false", "driving_difficulty": 3})
    # 10: a clip nobody labelled is still a clip.
    good("unlabelled")

    # 1-4, 16: videos that cannot be decoded; a label beside one is quarantined with it.
    video("zero_byte", b"", "video_decodable", "zero-byte")
    label("zero_byte", real_label(), "video_decodable", "its video zero_byte was quarantined", "zero-byte")
    whole = unique_copy(base, "truncated")
    video("truncated", whole[: int(len(whole) * 0.4)], "video_decodable", "truncated")
    label("truncated", real_label(), "video_decodable", "its video truncated was quarantined", "truncated")
    video("not_a_video", json.dumps(real_label()).encode(), "video_decodable", "not a video", "text file")
    video("audio_only", audio, "video_decodable", "no video stream", "audio")

    # An upload cut short after its index (moov first, 5% of the mdat): header and first frame look
    # whole, so only the packet index shows the missing footage; its label goes with it.
    video(CUT_UPLOAD, cut_tail(REAL_VIDEO_PATH, 0.05), "truncated", *CUT_UPLOAD_REASON)
    label(CUT_UPLOAD, real_label(), "truncated", f"its video {CUT_UPLOAD} was quarantined", *CUT_UPLOAD_REASON)

    # 5, 15, 12 (nested): files in the wrong place or with the wrong name.
    write(f"videos/wrong_ext{VIDEO_SUFFIX[:-4]}.avi", unique_copy(base, "avi"), "layout", LAYOUT_REASON)
    write(f"videos/wrong_ext_mov{VIDEO_SUFFIX[:-4]}.mov", unique_copy(base, "mov"), "layout", LAYOUT_REASON)
    write("videos/readme.txt", b"uploaded by the fleet tool\n", "layout", LAYOUT_REASON)
    write(f"videos/sub/nested{VIDEO_SUFFIX}", unique_copy(base, "nested"), "layout", LAYOUT_REASON)
    write(f"metas/sub/nested{LABEL_SUFFIX}", json.dumps(real_label()).encode(), "layout", LAYOUT_REASON)
    write("notes.txt", b"batch notes at the batch root\n", "layout", LAYOUT_REASON)

    # 12: hostile clip ids; their labels go to quarantine with them.
    video(SPACE_ID, unique_copy(base, "space"), "clip_name", "unsafe clip id")
    label(SPACE_ID, real_label(), "clip_name", f"its video {SPACE_ID} was quarantined")
    video(UNICODE_ID, unique_copy(base, "unicode"), "clip_name", "unsafe clip id")
    label(UNICODE_ID, real_label(), "clip_name", f"its video {UNICODE_ID} was quarantined")
    video("-leading-dash", unique_copy(base, "dash"), "clip_name", "unsafe clip id")

    # 6: a valid clip over the size limit (checked from the listing, before any download).
    video("oversized", big, "video_size", "exceeds the")

    # 13: decodable but outside the bounds.
    video("too_short", unique_copy(short, "short"), "video_bounds", "duration 0.30s outside")

    # 7-9: bad labels; their clips are still clips, unlabelled.
    for clip_id, content, check, reason in (
        ("label_bad_json", '{"weather": "Clear skies", "lighting": ', "label_json", ("not valid JSON",)),
        ("label_not_utf8", b'{"weather": "\xff"}', "label_json", ("not valid JSON",)),
        (
            "label_wrong_types",
            real_label() | {"driving_difficulty": "3", "rule_violation": 7},
            "label_schema",
            ("driving_difficulty", "'3'", "rule_violation", "7"),
        ),
        ("label_sandstorm", real_label() | {"weather": "Sandstorm"}, "label_schema", ("weather", "Sandstorm")),
        ("label_not_object", "[1, 2, 3]", "label_schema", ("expected a JSON object",)),
    ):
        rel = video(clip_id, unique_copy(base, clip_id), "clip")
        if isinstance(content, bytes):
            corpus.labels[rel] = write(f"metas/{clip_id}{LABEL_SUFFIX}", content, check, *reason)
        else:
            corpus.labels[rel] = label(clip_id, content, check, *reason)
    missing_field = {k: v for k, v in real_label().items() if k != "safety_analysis"}
    rel = video("label_missing_field", unique_copy(base, "missing"), "clip")
    corpus.labels[rel] = label("label_missing_field", missing_field, "label_schema", "safety_analysis: missing")

    # 11: the same bytes as good_a under another name (sorts after it, so good_a is the original);
    # its label follows it into quarantine.
    video(
        DUPLICATE_COPY,
        (batch_dir / "videos" / f"{DUPLICATE_SOURCE}{VIDEO_SUFFIX}").read_bytes(),
        "duplicate",
        f"same content as clip {DUPLICATE_SOURCE} of batch {batch}",
    )
    label(DUPLICATE_COPY, real_label(), "duplicate", f"its video {DUPLICATE_COPY} was quarantined", "same content")

    # 14: a label without a video.
    label("orphan", real_label(), "orphan_label", "no video orphan in videos/")

    # Labels of bad-label clips are quarantined, so those rows carry no label.
    for rel, label_rel in list(corpus.labels.items()):
        if label_rel is not None and corpus[label_rel] != "clip":
            corpus.labels[rel] = None

    others = max(
        (batch_dir / r).stat().st_size for r, o in corpus.items() if r.startswith("videos/") and o != "video_size"
    )
    assert len(big) > 2 * others, (len(big), others)  # the noise clip must be clearly the biggest
    corpus.limits = IngestLimits(max_size_bytes=(len(big) + others) // 2)

    if ready:
        write_ready(batch_dir)
    return corpus


def write_ready(batch_dir: Path) -> Path:
    marker = Path(batch_dir) / READY_MARKER
    marker.write_bytes(b"")
    return marker


def build_duplicate_batch(batch_dir: Path, source_video: Path, copy_id: str, *, ready: bool = True) -> dict[str, str]:
    """A second batch: a byte copy of `source_video` under `copy_id` (with a label), plus one new clip."""
    batch_dir = Path(batch_dir)
    (batch_dir / "videos").mkdir(parents=True, exist_ok=True)
    (batch_dir / "metas").mkdir(exist_ok=True)
    data = Path(source_video).read_bytes()
    (batch_dir / "videos" / f"{copy_id}{VIDEO_SUFFIX}").write_bytes(data)
    (batch_dir / "metas" / f"{copy_id}{LABEL_SUFFIX}").write_text(json.dumps(real_label()), encoding="utf-8")
    (batch_dir / "videos" / f"fresh{VIDEO_SUFFIX}").write_bytes(unique_copy(data, "fresh-in-second-batch"))
    if ready:
        write_ready(batch_dir)
    return {
        f"videos/{copy_id}{VIDEO_SUFFIX}": "duplicate",
        f"metas/{copy_id}{LABEL_SUFFIX}": "duplicate",
        f"videos/fresh{VIDEO_SUFFIX}": "clip",
    }


__all__ = [
    "CUT_UPLOAD",
    "Corpus",
    "S3OnlyInput",
    "build_corpus",
    "build_duplicate_batch",
    "encode_clip",
    "encode_audio_only",
    "real_label",
    "s3_only_inputs",
    "write_ready",
]
