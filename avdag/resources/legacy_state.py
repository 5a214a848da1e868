"""State from before `AVDAG_DB_URL` (a SQLite file or JSON records per store, under `$AVDAG_HOME`), moved in once.

A home upgraded in place keeps its dedup registry, its verdicts and its judge batches (an
uncollected batch is still collected): a store that finds its old file while its table is empty
copies the rows and says so in the log. The old files stay where they are and are no longer read.
"""

import sqlite3
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from avdag.core.common.database import Database


def import_legacy(copy: Callable[[Path], int], old: Path, what: str, db: Database) -> None:
    """Run one store's `import_legacy(old)` and log what it copied, or why it could not."""
    try:
        copied = copy(old)
    except (sqlite3.Error, OSError, ValueError) as error:
        dg.get_dagster_logger().warning(
            f"{old} holds {what} from before AVDAG_DB_URL and could not be imported into {db.redacted_url}: {error}"
        )
        return
    if copied:
        dg.get_dagster_logger().warning(
            f"imported {copied} {what} from {old} into {db.redacted_url} (AVDAG_DB_URL); that file is no longer read"
        )
