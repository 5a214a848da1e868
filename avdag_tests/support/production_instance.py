"""A Dagster home with avdag's production instance config (`avdag/dagster-production.yaml`) on test servers.

    env = production_instance_env(postgres_url, s3, dagster_home)   # the variables the config reads
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance: ...   # with `env` in os.environ

Runs and events go to a new database of their own on the throwaway Postgres, compute logs to a bucket on
the loopback S3 (found through AWS_ENDPOINT_URL_S3, as the config's comment tells non-AWS stores to do).
"""

from __future__ import annotations

import shutil
import uuid
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

PRODUCTION_CONFIG = Path(str(files("avdag") / "dagster-production.yaml"))
COMPUTE_LOGS_BUCKET = "compute-logs"
COMPUTE_LOGS_PREFIX = "dagster-compute-logs"  # as the config sets it


def production_instance_env(postgres_url: str, s3, dagster_home: Path) -> dict[str, str]:
    """Install the production config in `dagster_home`; the environment it needs (Postgres, S3, DAGSTER_HOME)."""
    database = f"dagster_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {database}")
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(PRODUCTION_CONFIG, dagster_home / "dagster.yaml")
    server = urlsplit(postgres_url)
    return {
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_PG_HOST": server.hostname,
        "DAGSTER_PG_PORT": str(server.port),
        "DAGSTER_PG_USERNAME": server.username,
        "DAGSTER_PG_PASSWORD": "",  # the test server trusts loopback connections
        "DAGSTER_PG_DB": database,
        "DAGSTER_COMPUTE_LOGS_BUCKET": s3.make_bucket(COMPUTE_LOGS_BUCKET),
        "AWS_ENDPOINT_URL_S3": s3.endpoint_url,
    }


def compute_logs(s3) -> dict[str, bytes]:
    """Every stdout capture the instance uploaded: S3 key -> content."""
    fs = s3.fs()
    return {
        key: fs.cat_file(key) for key in fs.find(f"{COMPUTE_LOGS_BUCKET}/{COMPUTE_LOGS_PREFIX}") if key.endswith(".out")
    }
