"""Judge results by content, so a re-run or an unchanged answer costs no judge call.

A result is keyed by what decides it: the judge's scope (model and a hash of its system prompt and
user template) plus the question, the human answer and the model answer (and, for an item judged
several times, which repeat). The baseline and the fine-tuned scoring share one store, so a
fine-tuned answer identical to the baseline's reuses its verdict. Only verdicts with a score are
stored: failures and unparseable replies are asked again.

SQLite in WAL mode: many small entries, readers never block the writer, and several threads or
processes (parallel batch partitions) can share one file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import closing
from pathlib import Path

from avdag.core.judging.items import JudgeItem

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY, score INTEGER NOT NULL, reply TEXT NOT NULL, scope TEXT NOT NULL, created REAL NOT NULL
);
"""
_LOOKUP_CHUNK = 500  # keys per SELECT, well under SQLite's bound-parameter limit


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
    """key -> (score, reply) of successful verdicts, in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def lookup(self, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
        """{key: (score, reply)} for the keys that are stored."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, tuple[int, str]] = {}
        with closing(self._connect()) as db:
            for start in range(0, len(unique), _LOOKUP_CHUNK):
                chunk = unique[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(f"SELECT key, score, reply FROM verdicts WHERE key IN ({marks})", chunk)
                found.update({key: (score, reply) for key, score, reply in rows})
        return found

    def store(self, scope: str, entries: Sequence[tuple[str, int, str]]) -> None:
        """Store (key, score, reply) results of one judge scope; a key stored again is replaced."""
        if any(not isinstance(score, int) for _, score, _ in entries):
            raise ValueError("only verdicts with a score can be cached")
        now = time.time()
        with closing(self._connect()) as db, db:
            db.executemany(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?)",
                [(key, score, reply, scope, now) for key, score, reply in entries],
            )

    def __len__(self) -> int:
        with closing(self._connect()) as db:
            return db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
