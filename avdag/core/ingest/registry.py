"""Which content is which clip, across every batch: the dedup registry.

The same video (same sha256) uploaded twice — under another name, or in another batch — is one
clip: the first registration wins and every later upload is recorded as another source. A clip
id reused for different content is a conflict, not a silent overwrite. SQLite keeps this
consistent when several batch runs register at once.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clips (
    sha256 TEXT PRIMARY KEY, clip_id TEXT NOT NULL, batch TEXT NOT NULL, source_url TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS clips_by_id ON clips (clip_id);
CREATE TABLE IF NOT EXISTS sources (
    sha256 TEXT NOT NULL, batch TEXT NOT NULL, clip_id TEXT NOT NULL, source_url TEXT NOT NULL,
    PRIMARY KEY (batch, source_url)
);
"""


@dataclass(frozen=True)
class Registration:
    """Outcome for one uploaded video: a clip of its own, a duplicate of one, or an id conflict."""

    status: str  # "clip" | "duplicate" | "id_conflict"
    clip_id: str  # the canonical clip (for a duplicate: the first upload's id)
    batch: str  # the canonical clip's batch


class ClipRegistry:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60, isolation_level="IMMEDIATE")

    def register(self, batch: str, clip_id: str, sha256: str, source_url: str) -> Registration:
        """Register one upload; idempotent, so re-running a batch gives the same answers."""
        with closing(self._connect()) as db, db:
            db.execute("INSERT OR IGNORE INTO sources VALUES (?, ?, ?, ?)", (sha256, batch, clip_id, source_url))
            row = db.execute("SELECT clip_id, batch, source_url FROM clips WHERE sha256 = ?", (sha256,)).fetchone()
            if row is not None:
                same_upload = row[1] == batch and row[0] == clip_id
                return Registration("clip" if same_upload else "duplicate", row[0], row[1])
            owner = db.execute("SELECT batch FROM clips WHERE clip_id = ?", (clip_id,)).fetchone()
            if owner is not None and owner[0] != batch:
                return Registration("id_conflict", clip_id, owner[0])
            # New content, or a changed re-upload of this batch's own clip (its new content wins).
            db.execute("DELETE FROM clips WHERE clip_id = ? AND batch = ?", (clip_id, batch))
            db.execute("INSERT INTO clips VALUES (?, ?, ?, ?)", (sha256, clip_id, batch, source_url))
            return Registration("clip", clip_id, batch)

    def sources(self, sha256: str) -> list[tuple[str, str, str]]:
        """Every (batch, clip_id, source_url) this content was uploaded as."""
        with closing(self._connect()) as db:
            return db.execute(
                "SELECT batch, clip_id, source_url FROM sources WHERE sha256 = ? ORDER BY batch, source_url", (sha256,)
            ).fetchall()
