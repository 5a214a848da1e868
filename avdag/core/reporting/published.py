"""Reports that belong together, published as one: the comparison's JSON and its chart.

Both files go into a state-store folder named by their content, each written atomically, and only
then does the one-line pointer `reports/latest.json` move to it (one atomic write). A reader
follows the pointer and so always sees a JSON and a PNG from the same run, even while another run
publishes, from any machine that reaches the store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from avdag.core.common.state_store import StateStore

REPORTS = "reports"
POINTER = f"{REPORTS}/latest.json"


@dataclass(frozen=True)
class ReportFiles:
    """State-store keys of one published report (`StateStore.uri` names them for people)."""

    folder: str
    json: str
    png: str


def publish_report(store: StateStore, report: dict[str, Any], png: bytes) -> ReportFiles:
    body = (json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    folder = f"{REPORTS}/comparison-{hashlib.sha256(body + png).hexdigest()[:16]}"
    files = ReportFiles(folder, f"{folder}/comparison.json", f"{folder}/comparison.png")
    store.write_bytes(files.json, body)
    store.write_bytes(files.png, png)
    store.write_json(POINTER, {"folder": files.folder, "json": files.json, "png": files.png})
    return files


def latest_report(store: StateStore) -> ReportFiles:
    """The files the pointer names; FileNotFoundError when nothing was published yet."""
    data = store.read_json(POINTER)
    return ReportFiles(data["folder"], data["json"], data["png"])
