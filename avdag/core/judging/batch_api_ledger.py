"""What avdag has sent to the OpenAI Batch API and not yet brought back, one JSON file per submission.

A submission is the set of judge requests one scoring run could not answer from the cache, sent as
one or more batches. Its record names the batches, the request ids (cache keys) it covers and who
is waiting for it (an asset and partition), so that a re-run while the batch is still running
reuses it instead of paying twice, and a sensor knows which run to request when it ends.
Records are written atomically and kept after collection, as the trail of what was bought.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from avdag.core.common.atomic import write_json_atomic
from avdag.core.common.locks import file_lock

# Batch statuses after which nothing more will happen (OpenAI's names).
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})


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


class BatchApiLedger:
    """Submission records in a folder: `<request_key>.json`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _path(self, request_key: str) -> Path:
        return self.folder / f"{request_key}.json"

    def save(self, submission: BatchApiSubmission) -> None:
        """Write a new record (hold `claim` for its request key while deciding to create it)."""
        write_json_atomic(self._path(submission.request_key), submission.as_dict())

    def claim(self, request_key: str):
        """An exclusive lock on one request key: who holds it decides alone whether to submit."""
        return file_lock(self._path(request_key))

    def update(self, request_key: str, change: Callable[[BatchApiSubmission], None]) -> BatchApiSubmission:
        """Re-read the record under its lock, apply `change`, write it back.

        The sensor (refreshing statuses) and a run (marking collection) may write the same record
        at once; each change is applied to the latest record, so neither undoes the other's.
        """
        with file_lock(self._path(request_key)):
            submission = self.load(request_key)
            if submission is None:
                raise KeyError(f"no judge batch record {self._path(request_key)}")
            change(submission)
            write_json_atomic(self._path(request_key), submission.as_dict())
            return submission

    def load(self, request_key: str) -> BatchApiSubmission | None:
        path = self._path(request_key)
        return self._read(path) if path.exists() else None

    def submissions(self) -> list[BatchApiSubmission]:
        """Every record, newest first."""
        found = [self._read(path) for path in self.folder.glob("*.json")] if self.folder.exists() else []
        return sorted(found, key=lambda submission: submission.submitted_at, reverse=True)

    def uncollected(self) -> list[BatchApiSubmission]:
        """Submissions whose results no run has taken yet: what the sensor watches."""
        return [submission for submission in self.submissions() if submission.collected_at is None]

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

    @staticmethod
    def _read(path: Path) -> BatchApiSubmission:
        try:
            return BatchApiSubmission.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"unreadable judge batch record {path}: {error}") from error


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
