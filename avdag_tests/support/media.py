"""Small media helpers shared by tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def unique_copy(clip: bytes, tag: str) -> bytes:
    """The same decodable MP4 with a trailing 'free' box carrying `tag`: new sha256, same frames."""
    payload = tag.encode("utf-8")
    return clip + (8 + len(payload)).to_bytes(4, "big") + b"free" + payload


def top_level_boxes(data: bytes) -> list[tuple[str, int, int]]:
    """(type, offset, size) of each top-level MP4 box."""
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        elif size == 0:
            size = len(data) - offset
        boxes.append((kind, offset, size))
        offset += max(size, 8)
    return boxes


def faststart(mp4: Path) -> bytes:
    """The MP4's bytes with its index (moov) ahead of the media data, remuxed by ffmpeg if it was not."""
    data = Path(mp4).read_bytes()
    kinds = [kind for kind, _, _ in top_level_boxes(data)]
    if kinds.index("moov") < kinds.index("mdat"):
        return data
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg, "the ffmpeg binary is needed to move an MP4's moov box to the front"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "faststart.mp4"
        subprocess.run(
            [ffmpeg, "-v", "error", "-i", str(mp4), "-c", "copy", "-movflags", "+faststart", str(out)], check=True
        )
        return out.read_bytes()


def cut_tail(mp4: Path, keep_fraction: float = 0.1) -> bytes:
    """An upload cut short after its index: the whole moov survives, the mdat keeps `keep_fraction`.

    The header still declares the full duration and frame count and the first frame decodes, which
    is what a probe that reads only the header and first frame accepts as a whole clip.
    """
    data = faststart(mp4)
    (_, offset, size) = next(box for box in top_level_boxes(data) if box[0] == "mdat")
    return data[: offset + 8 + int((size - 8) * keep_fraction)]


def encode_drive(
    path: Path, *, seconds: float, fps: int = 10, gop: int = 20, width: int = 128, height: int = 72, seed: int = 0
) -> Path:
    """A small H.264 drive recording with a keyframe every `gop` frames (and B-frames, x264's default).

    Every frame differs (a moving bar over a drifting background), so a frame-exact cut is visible.
    """
    from fractions import Fraction

    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, 3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libx264", rate=Fraction(fps), options={"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(round(seconds * fps)):
            rgb = np.empty((height, width, 3), np.uint8)
            rgb[:] = (base + index * 3) % 256
            x = (index * 5) % width
            rgb[:, x : x + 8] = 255
            rgb[height // 2 :, :, 1] = (index * 11) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
