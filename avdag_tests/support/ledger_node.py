"""Another node of a deployment claiming judge-batch submissions, for the ledger tests to run in a spawned process.

Apart from the test module so that the process imports only the ledger and starts in a fraction of
a second, not the seconds the `openai` client and pytest take.
"""

import os
import time
from pathlib import Path

from avdag.core.judging.batch_api_ledger import BatchApiLedger, BatchApiPart, BatchApiSubmission


def a_submission(request_key: str, batch_id: str) -> BatchApiSubmission:
    """A one-request submission of one running batch."""
    part = BatchApiPart(batch_id, f"file-{batch_id}", 1, "in_progress")
    return BatchApiSubmission(request_key, "scope", {"asset": "a", "partition": "p"}, ["c1"], [part])


def hold_claim(db_url: str, request_key: str, flag: str, hold_s: float) -> None:
    """Claim `request_key`, touch `flag`, buy for `hold_s` seconds, record batch `batch_other_node`."""
    with BatchApiLedger(db_url).claim(request_key) as claim:
        Path(flag).touch()
        time.sleep(hold_s)
        claim.record(a_submission(request_key, "batch_other_node"))


def race_for_claim(db_url: str, request_key: str, ready, results) -> None:
    """Claim `request_key` together with another process; put (what happened, the batch, seconds it took) on `results`.

    The winner "buys" for a second and records `batch_<pid>`; the other should wait and reuse it.
    """
    ledger = BatchApiLedger(db_url, poll_s=0.05)
    ready.wait(timeout=60)
    started = time.monotonic()
    with ledger.claim(request_key) as claim:
        if claim.existing is not None:
            results.put(("reused", claim.existing.parts[0].batch_id, time.monotonic() - started))
            return
        time.sleep(1.0)
        claim.record(a_submission(request_key, f"batch_{os.getpid()}"))
        results.put(("bought", f"batch_{os.getpid()}", time.monotonic() - started))
