"""What avdag has sent to the OpenAI Batch API: one database row per purchase.

A submission is the set of judge requests one scoring run could not answer from the cache, sent as
one or more batches. Its record names the batches, the request ids (cache keys) it covers and who
is waiting for it (an asset and partition), so that a re-run while the batch is still running
reuses it instead of paying twice, and a sensor knows which run to request when it ends.

The records live in the shared database (`AVDAG_DB_URL`), so a sensor on one node sees what a run
on another bought. A run claims the request key in the database before it buys (a unique row,
"claimed" by that run), so runs racing to submit the same requests, on any node, buy one batch:
the others wait for the claimer's record and reuse it. Records are kept after collection, as the
trail of what was bought; the same requests bought again after a collection get the next attempt.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Connection, Double, Integer, MetaData, Row, Table, Text, delete, select, update

from avdag.core.common.database import Database

# Batch statuses after which nothing more will happen (OpenAI's names).
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
# A claim older than this has lost its run (killed while buying): another run takes it over and adopts
# what was created. Generous: buying uploads up to 190 MB per part before the batch is created.
CLAIM_STALE_AFTER_S = 30 * 60
CLAIMED, SUBMITTED = "claimed", "submitted"

_METADATA = MetaData()
_BATCHES = Table(
    "avdag_judge_batches",
    _METADATA,
    Column("request_key", Text, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("state", Text, nullable=False),
    Column("owner", Text, nullable=False),
    Column("claimed_at", Double, nullable=False),
    Column("submitted_at", Double),
    Column("collected_at", Double),
    Column("record", Text),  # the BatchApiSubmission as JSON, once submitted
)


@dataclass
class BatchApiPart:
    """One OpenAI batch of a submission (a submission has several past the per-batch request limit)."""

    batch_id: str
    input_file_id: str
    requests: int
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    errors: str | None = None  # why the batch itself failed (validation), as OpenAI said

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass
class BatchApiSubmission:
    request_key: str
    scope: str
    requested_by: dict[str, str]
    custom_ids: list[str]
    parts: list[BatchApiPart]
    submitted_at: float = field(default_factory=time.time)
    collected_at: float | None = None

    @property
    def ended(self) -> bool:
        return all(part.ended for part in self.parts)

    def progress(self) -> str:
        """E.g. 'batch_abc in_progress 120/300' for each part, for logs and skip reasons."""
        return ", ".join(f"{p.batch_id} {p.status} {p.completed + p.failed}/{p.requests}" for p in self.parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchApiSubmission:
        return cls(**{**data, "parts": [BatchApiPart(**part) for part in data["parts"]]})


def submission_key(scope: str, custom_ids: list[str]) -> str:
    """The same requests under the same judge always get the same key."""
    return hashlib.sha256(json.dumps([scope, sorted(set(custom_ids))]).encode()).hexdigest()


class ClaimLost(RuntimeError):
    """The claim was taken over while this run was still buying (it looked dead): its purchase is not recorded."""


@dataclass
class SubmissionClaim:
    """What `BatchApiLedger.claim` found: a submission to reuse (`existing`), or the right to buy."""

    ledger: BatchApiLedger
    request_key: str
    attempt: int
    owner: str
    existing: BatchApiSubmission | None
    recorded: bool = False

    def record(self, submission: BatchApiSubmission) -> None:
        """Record what was bought under this claim; it is then what every other run reuses."""
        with self.ledger.db.write() as db:
            stored = db.execute(
                update(_BATCHES)
                .where(*self._mine(), _BATCHES.c.state == CLAIMED)
                .values(state=SUBMITTED, **_record_values(submission))
            ).rowcount
        if not stored:
            raise ClaimLost(
                f"judge batch claim {self.request_key} was taken over by another run (no record after "
                f"{self.ledger.claim_stale_after_s:.0f}s) while this one bought {submission.progress()}: those batches "
                "are not recorded; cancel them if the other run bought its own"
            )
        self.recorded = True

    def release(self) -> None:
        """Drop an unused claim, so the next run buys instead of waiting."""
        with self.ledger.db.write() as db:
            db.execute(delete(_BATCHES).where(*self._mine(), _BATCHES.c.state == CLAIMED))

    def _mine(self) -> tuple:
        columns = _BATCHES.c
        return columns.request_key == self.request_key, columns.attempt == self.attempt, columns.owner == self.owner


class BatchApiLedger:
    """Submission records in the shared database, one row per purchase: (request key, attempt)."""

    def __init__(
        self, db: Database | str, *, claim_stale_after_s: float = CLAIM_STALE_AFTER_S, poll_s: float = 0.5
    ) -> None:
        self.db = db if isinstance(db, Database) else Database(db)
        self.db.ensure_schema(_METADATA)
        self.claim_stale_after_s = claim_stale_after_s
        self.poll_s = poll_s

    @contextmanager
    def claim(self, request_key: str) -> Iterator[SubmissionClaim]:
        """Decide alone whether to buy the requests under `request_key`.

        Yields a claim whose `existing` is the uncollected submission to reuse, or None: then this
        caller alone may buy, and records it with `claim.record(...)`. While another run holds the
        claim this waits for that run's record; a claim older than `claim_stale_after_s` is taken
        over. A claim left without a record (buying failed) is released for the next run.
        """
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        while True:
            with self.db.write() as db:
                claim = self._try_claim(db, request_key, owner)
            if claim is not None:
                break
            time.sleep(self.poll_s)
        try:
            yield claim
        finally:
            if claim.existing is None and not claim.recorded:
                claim.release()

    def _try_claim(self, db: Connection, request_key: str, owner: str) -> SubmissionClaim | None:
        """The claim, or the submission to reuse; None while another live run is buying."""
        latest = db.execute(
            select(_BATCHES)
            .where(_BATCHES.c.request_key == request_key)
            .order_by(_BATCHES.c.attempt.desc())
            .limit(1)
            .with_for_update()
        ).first()
        now = time.time()
        if latest is not None and latest.state == SUBMITTED and latest.collected_at is None:
            return SubmissionClaim(self, request_key, latest.attempt, owner, existing=_submission(latest))
        if latest is None or latest.state == SUBMITTED:  # nothing bought yet, or the last purchase was collected
            attempt = 0 if latest is None else latest.attempt + 1
            row = dict(request_key=request_key, attempt=attempt, state=CLAIMED, owner=owner, claimed_at=now)
            if db.execute(self.db.insert_new(_BATCHES).values(**row)).rowcount:
                return SubmissionClaim(self, request_key, attempt, owner, existing=None)
            return None  # another run claimed it first
        if latest.claimed_at < now - self.claim_stale_after_s:
            db.execute(
                update(_BATCHES)
                .where(_BATCHES.c.request_key == request_key, _BATCHES.c.attempt == latest.attempt)
                .values(owner=owner, claimed_at=now)
            )
            return SubmissionClaim(self, request_key, latest.attempt, owner, existing=None)
        return None

    def update(self, request_key: str, change: Callable[[BatchApiSubmission], None]) -> BatchApiSubmission:
        """Re-read the latest record under a row lock, apply `change`, write it back.

        The sensor (refreshing statuses) and a run (marking collection) may write the same record
        at once; each change is applied to the latest record, so neither undoes the other's.
        """
        with self.db.write() as db:
            row = db.execute(self._latest(request_key).with_for_update()).first()
            if row is None:
                raise KeyError(f"no judge batch record for request key {request_key}")
            submission = _submission(row)
            change(submission)
            db.execute(
                update(_BATCHES)
                .where(_BATCHES.c.request_key == request_key, _BATCHES.c.attempt == row.attempt)
                .values(**_record_values(submission))
            )
            return submission

    def load(self, request_key: str) -> BatchApiSubmission | None:
        """The latest submission recorded for this request key."""
        with self.db.read() as db:
            row = db.execute(self._latest(request_key)).first()
        return None if row is None else _submission(row)

    def submissions(self) -> list[BatchApiSubmission]:
        """Every record, newest first."""
        return self._submissions(_BATCHES.c.state == SUBMITTED)

    def uncollected(self) -> list[BatchApiSubmission]:
        """Submissions whose results no run has taken yet: what the sensor watches."""
        return self._submissions(_BATCHES.c.state == SUBMITTED, _BATCHES.c.collected_at.is_(None))

    def covering(self, scope: str, custom_ids: list[str]) -> BatchApiSubmission | None:
        """The newest uncollected submission of this judge that holds every one of `custom_ids`.

        A superset counts: once the other score asset has cached part of a shared batch's
        answers, the rest are still waiting in that batch, not in a new one.
        """
        wanted = set(custom_ids)
        for submission in self.uncollected():
            if submission.scope == scope and wanted <= set(submission.custom_ids):
                return submission
        return None

    def import_legacy(self, folder: str | Path) -> int:
        """Copy the JSON records from before `AVDAG_DB_URL` (`<request_key>.json`) into an empty ledger.

        The number of records copied; uncollected ones are then watched by the sensor as before.
        """
        paths = sorted(Path(folder).glob("*.json"))
        if not paths:
            return 0
        with self.db.write() as db:
            if db.execute(select(_BATCHES.c.request_key).limit(1)).first() is not None:
                return 0
            rows = []
            for path in paths:
                submission = _parse(path.read_text(), path.name)
                row = dict(request_key=submission.request_key, attempt=0, state=SUBMITTED, owner="imported")
                rows.append(row | dict(claimed_at=submission.submitted_at) | _record_values(submission))
            db.execute(self.db.insert_new(_BATCHES), rows)
            return len(rows)

    def _latest(self, request_key: str):
        return (
            select(_BATCHES)
            .where(_BATCHES.c.request_key == request_key, _BATCHES.c.state == SUBMITTED)
            .order_by(_BATCHES.c.attempt.desc())
            .limit(1)
        )

    def _submissions(self, *conditions) -> list[BatchApiSubmission]:
        with self.db.read() as db:
            rows = db.execute(select(_BATCHES).where(*conditions).order_by(_BATCHES.c.submitted_at.desc())).all()
        return [_submission(row) for row in rows]


def _record_values(submission: BatchApiSubmission) -> dict[str, Any]:
    return dict(
        submitted_at=submission.submitted_at,
        collected_at=submission.collected_at,
        record=json.dumps(submission.as_dict()),
    )


def _submission(row: Row) -> BatchApiSubmission:
    return _parse(row.record, f"request key {row.request_key} attempt {row.attempt}")


def _parse(record: str, where: str) -> BatchApiSubmission:
    try:
        return BatchApiSubmission.from_dict(json.loads(record))
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"unreadable judge batch record ({where}): {error}") from error


def runs_to_request(ended: list[BatchApiSubmission]) -> dict[str, tuple[list[str], str]]:
    """{partition: (assets waiting there, run key)} for ended submissions.

    The run key is derived from the submissions it collects, so a sensor that sees the same
    ended batches again asks for no second run.
    """
    by_partition: dict[str, list[BatchApiSubmission]] = {}
    for submission in ended:
        by_partition.setdefault(submission.requested_by.get("partition", ""), []).append(submission)
    runs = {}
    for partition, submissions in sorted(by_partition.items()):
        assets = sorted({submission.requested_by["asset"] for submission in submissions})
        keys = sorted(submission.request_key for submission in submissions)
        runs[partition] = (assets, "judge-batch:" + hashlib.sha256(" ".join(keys).encode()).hexdigest()[:24])
    return runs
