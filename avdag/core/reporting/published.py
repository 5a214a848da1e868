"""Reports that belong together, published as one: the comparison's JSON and its chart.

Both files go into a folder named by their content, written completely, and only then does the
one-line pointer `latest.json` move to it (an atomic rename). A reader follows the pointer and so
always sees a JSON and a PNG from the same run, even while another run publishes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avdag.core.common.atomic import write_json_atomic
from avdag.core.common.locks import build_once

POINTER = "latest.json"


@dataclass(frozen=True)
class ReportFiles:
    folder: str
    json: str
    png: str


def publish_report(reports_dir: str | Path, report: dict[str, Any], png: bytes) -> ReportFiles:
    reports_dir = Path(reports_dir)
    body = (json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    digest = hashlib.sha256(body + png).hexdigest()[:16]
    folder = reports_dir / f"comparison-{digest}"

    def write(staging: Path) -> None:
        (staging / "comparison.json").write_bytes(body)
        (staging / "comparison.png").write_bytes(png)

    build_once(folder, write, on_reuse=lambda path: None)
    files = ReportFiles(str(folder), str(folder / "comparison.json"), str(folder / "comparison.png"))
    write_json_atomic(reports_dir / POINTER, {"folder": files.folder, "json": files.json, "png": files.png})
    return files


def latest_report(reports_dir: str | Path) -> ReportFiles:
    """The files the pointer names; FileNotFoundError when nothing was published yet."""
    pointer = Path(reports_dir) / POINTER
    data = json.loads(pointer.read_text(encoding="utf-8"))
    return ReportFiles(data["folder"], data["json"], data["png"])
