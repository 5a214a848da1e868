"""Judge results by content, so a re-run or an unchanged answer costs no judge call.

A result is keyed by what decides it: the judge's scope (model and a hash of its system prompt and
user template) plus the question, the human answer and the model answer (and, for an item judged
several times, which repeat). The baseline and the fine-tuned scoring share one store, so a
fine-tuned answer identical to the baseline's reuses its verdict. Only verdicts with a score are
stored: failures and unparseable replies are asked again.

They live in the shared database (`AVDAG_DB_URL`), so every node of a deployment reuses every
verdict bought. A key is stored once: the first verdict wins, so two runs that judged the same item
at once keep one answer, the same one everywhere.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import closing
from pathlib import Path

from sqlalchemy import Column, Double, Integer, MetaData, Table, Text, func, select

from avdag.core.common.database import Database
from avdag.core.judging.items import JudgeItem

_METADATA = MetaData()
_VERDICTS = Table(
    "avdag_judge_verdicts",
    _METADATA,
    Column("key", Text, primary_key=True),
    Column("score", Integer, nullable=False),
    Column("reply", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("created", Double, nullable=False),
)
_CHUNK = 500  # keys per SELECT and rows per INSERT, well under SQLite's and Postgres' bound-parameter limits


def judge_cache_scope(model_id: str, system_prompt: str, user_template: str) -> str:
    """The judge's part of a cache key: e.g. 'openai:gpt-5|prompt:1a2b...'."""
    prompt_hash = hashlib.sha256(json.dumps([system_prompt, user_template]).encode()).hexdigest()[:16]
    return f"{model_id}|prompt:{prompt_hash}"


def judge_cache_key(scope: str, item: JudgeItem, repeat: int = 0) -> str:
    """sha256 over the judge scope and the item's question and answers (as JSON, so types count).

    `repeat` tells apart the asks of one item judged several times; repeat 0 is left out of the
    payload, so it is the key a single ask always had and caches from before repeats stay valid.
    """
    fields = [scope, item.question, item.human_answer, item.model_answer] + ([repeat] if repeat else [])
    payload = json.dumps(fields, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class JudgeCache:
    """key -> (score, reply) of successful verdicts, in the shared database."""

    def __init__(self, db: Database | str) -> None:
        self.db = db if isinstance(db, Database) else Database(db)
        self.db.ensure_schema(_METADATA)

    def lookup(self, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
        """{key: (score, reply)} for the keys that are stored."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, tuple[int, str]] = {}
        columns = _VERDICTS.c
        with self.db.read() as db:
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                rows = db.execute(select(columns.key, columns.score, columns.reply).where(columns.key.in_(chunk)))
                found.update({key: (score, reply) for key, score, reply in rows})
        return found

    def store(self, scope: str, entries: Sequence[tuple[str, int, str]]) -> None:
        """Store (key, score, reply) results of one judge scope; a key already stored keeps its first verdict."""
        if any(not isinstance(score, int) for _, score, _ in entries):
            raise ValueError("only verdicts with a score can be cached")
        now = time.time()
        rows = [dict(key=key, score=score, reply=reply, scope=scope, created=now) for key, score, reply in entries]
        self._insert(rows)

    def import_legacy(self, path: str | Path) -> int:
        """Copy a verdict file from before `AVDAG_DB_URL` into an empty cache; the number of verdicts copied."""
        path = Path(path)
        if not path.is_file():
            return 0
        with self.db.read() as db:
            if db.execute(select(_VERDICTS.c.key).limit(1)).first() is not None:
                return 0
        with closing(sqlite3.connect(path)) as old:
            old.row_factory = sqlite3.Row
            rows = [dict(row) for row in old.execute("SELECT key, score, reply, scope, created FROM verdicts")]
        self._insert(rows)
        return len(rows)

    def _insert(self, rows: list[dict]) -> None:
        if not rows:
            return
        with self.db.write() as db:
            for start in range(0, len(rows), _CHUNK):
                db.execute(self.db.insert_new(_VERDICTS), rows[start : start + _CHUNK])

    def __len__(self) -> int:
        with self.db.read() as db:
            return db.execute(select(func.count()).select_from(_VERDICTS)).scalar_one()
