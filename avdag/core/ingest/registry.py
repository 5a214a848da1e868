"""Which content is which clip, across every batch: the dedup registry.

The same video (same sha256) uploaded twice — under another name, or in another batch — is one
clip: the first registration wins and every later upload is recorded as another source. A clip
id reused for different content is a conflict, not a silent overwrite. The registry lives in the
shared database (`AVDAG_DB_URL`), so batch runs registering at once, on one node or several, agree
on one winner: the sha256 and the clip id are unique keys, claimed with `INSERT ... ON CONFLICT DO
NOTHING` and re-read when another run got there first.

Near-duplicates (`near_duplicates.py`): each clip's perceptual signature is kept here too, with the
nearest clip registered before it and their distance, fixed at first registration, so re-runs give
the same answers and the earlier clip is always the twin (a pair is never flagged both ways).
Signature registrations queue on one lock, so twins registered by two runs at once are still paired.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Column, Connection, Float, Integer, MetaData, Table, Text, delete, select

from avdag.core.common.database import Database
from avdag.core.ingest.near_duplicates import SignatureIndex

_METADATA = MetaData()
_CLIPS = Table(
    "avdag_clips",
    _METADATA,
    Column("sha256", Text, primary_key=True),
    Column("clip_id", Text, nullable=False, unique=True),
    Column("batch", Text, nullable=False),
    Column("source_url", Text, nullable=False),
)
_SOURCES = Table(
    "avdag_clip_sources",
    _METADATA,
    Column("sha256", Text, nullable=False, index=True),
    Column("batch", Text, primary_key=True),
    Column("source_url", Text, primary_key=True),
    Column("clip_id", Text, nullable=False),
)
_SIGNATURES = Table(
    "avdag_clip_signatures",
    _METADATA,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # registration order: twins are earlier
    Column("sha256", Text, nullable=False, unique=True),
    Column("clip_id", Text, nullable=False),
    Column("batch", Text, nullable=False),
    Column("signature", Text, nullable=False),
    Column("twin_sha256", Text),  # the nearest clip registered before this one
    Column("twin_clip_id", Text),
    Column("distance", Float),
)
# Signature registrations queue on this (Postgres advisory lock): each twin search then sees every
# earlier signature, and sequence numbers commit in order, so no reader's catch-up skips one.
_SIGNATURE_LOCK_KEY = 0x61766461_67000002
_MAX_RACES = 5  # rounds of losing the same clip id to concurrent runs before giving up


@dataclass(frozen=True)
class Registration:
    """Outcome for one uploaded video: a clip of its own, a duplicate of one, or an id conflict."""

    status: str  # "clip" | "duplicate" | "id_conflict"
    clip_id: str  # the canonical clip (for a duplicate: the first upload's id)
    batch: str  # the canonical clip's batch


@dataclass(frozen=True)
class SignatureRecord:
    """A clip's perceptual signature and the nearest clip registered before it (None for the first)."""

    sha256: str
    clip_id: str
    batch: str
    signature: str
    twin_sha256: str | None
    twin_clip_id: str | None
    distance: float | None


class ClipRegistry:
    def __init__(self, db: Database | str) -> None:
        self.db = db if isinstance(db, Database) else Database(db)
        self.db.ensure_schema(_METADATA)
        self._clip_ids: dict[str, str] = {}  # sha256 -> clip id, of the signature rows up to _seen
        self._index = SignatureIndex()  # those rows' signatures, keyed by sha256
        self._seen = 0

    def signature_record(self, batch: str, clip_id: str, sha256: str, signature: Callable[[], str]) -> SignatureRecord:
        """This content's signature record, made now (`signature()` decodes the clip) unless one exists."""
        known = self.record_for(sha256)
        if known is not None:
            return known
        value = signature()
        with self.db.write() as db:
            self.db.serialize(db, _SIGNATURE_LOCK_KEY)
            self._catch_up(db)
            twin = self._index.nearest(value, exclude=sha256)
            row = dict(sha256=sha256, clip_id=clip_id, batch=batch, signature=value)
            if twin:
                row.update(twin_sha256=twin[0], twin_clip_id=self._clip_ids[twin[0]], distance=round(twin[1], 3))
            db.execute(self.db.insert_new(_SIGNATURES).values(**row))
        return self.record_for(sha256)  # ours, or a concurrent run's if it got there first

    def record_for(self, sha256: str) -> SignatureRecord | None:
        columns = [getattr(_SIGNATURES.c, name) for name in SignatureRecord.__dataclass_fields__]
        with self.db.read() as db:
            row = db.execute(select(*columns).where(_SIGNATURES.c.sha256 == sha256)).first()
        return SignatureRecord(*row) if row else None

    def _catch_up(self, db: Connection) -> None:
        """Load the signatures registered since the last call (every run's, in registration order)."""
        columns = (_SIGNATURES.c.seq, _SIGNATURES.c.sha256, _SIGNATURES.c.clip_id, _SIGNATURES.c.signature)
        query = select(*columns).where(_SIGNATURES.c.seq > self._seen).order_by(_SIGNATURES.c.seq)
        for seq, sha, clip_id, sig in db.execute(query):
            self._clip_ids[sha] = clip_id
            self._index.add(sha, sig)
            self._seen = seq

    def register(self, batch: str, clip_id: str, sha256: str, source_url: str) -> Registration:
        """Register one upload; idempotent, so re-running a batch gives the same answers."""
        with self.db.write() as db:
            source = dict(sha256=sha256, batch=batch, clip_id=clip_id, source_url=source_url)
            db.execute(self.db.insert_new(_SOURCES).values(**source))
            for _ in range(_MAX_RACES):
                known = _known(db, batch, clip_id, sha256)
                if known is not None:
                    return known
                # New content, or a changed re-upload of this batch's own clip (its new content wins).
                db.execute(delete(_CLIPS).where(_CLIPS.c.clip_id == clip_id, _CLIPS.c.batch == batch))
                if db.execute(self.db.insert_new(_CLIPS).values(**source)).rowcount:
                    return Registration("clip", clip_id, batch)
                # Another run registered this content or this clip id meanwhile: look again.
        raise RuntimeError(f"clip {clip_id} of batch {batch}: lost {_MAX_RACES} races to concurrent registrations")

    def sources(self, sha256: str) -> list[tuple[str, str, str]]:
        """Every (batch, clip_id, source_url) this content was uploaded as."""
        query = (
            select(_SOURCES.c.batch, _SOURCES.c.clip_id, _SOURCES.c.source_url)
            .where(_SOURCES.c.sha256 == sha256)
            .order_by(_SOURCES.c.batch, _SOURCES.c.source_url)
        )
        with self.db.read() as db:
            return [tuple(row) for row in db.execute(query)]

    def import_legacy(self, path: str | Path) -> int:
        """Copy a registry file from before `AVDAG_DB_URL` into an empty registry; the number of clips copied."""
        path = Path(path)
        if not path.is_file():
            return 0
        with self.db.write() as db:
            if db.execute(select(_CLIPS.c.sha256).limit(1)).first() is not None:
                return 0
            with closing(sqlite3.connect(path)) as old:
                old.row_factory = sqlite3.Row
                clips = [dict(row) for row in old.execute("SELECT sha256, clip_id, batch, source_url FROM clips")]
                sources = [dict(row) for row in old.execute("SELECT sha256, batch, clip_id, source_url FROM sources")]
            for table, rows in ((_SOURCES, sources), (_CLIPS, clips)):
                if rows:
                    db.execute(self.db.insert_new(table), rows)
            return len(clips)


def _known(db: Connection, batch: str, clip_id: str, sha256: str) -> Registration | None:
    """What the registry already says about this upload; None: the content is new and the id is free here."""
    row = db.execute(select(_CLIPS.c.clip_id, _CLIPS.c.batch).where(_CLIPS.c.sha256 == sha256)).first()
    if row is not None:
        same_upload = row.batch == batch and row.clip_id == clip_id
        return Registration("clip" if same_upload else "duplicate", row.clip_id, row.batch)
    owner = db.execute(select(_CLIPS.c.batch).where(_CLIPS.c.clip_id == clip_id)).scalar()
    if owner is not None and owner != batch:
        return Registration("id_conflict", clip_id, owner)
    return None
