"""The cross-batch dedup registry, as a resource (a SQLite file under $AVDAG_HOME by default)."""

import dagster as dg
from pydantic import Field

from avdag.core.ingest.registry import ClipRegistry
from avdag.settings import avdag_home


class ClipRegistryResource(dg.ConfigurableResource):
    """Knows every video's sha256 and the clip it belongs to, across all batches."""

    path: str | None = Field(default=None, description="SQLite file; default $AVDAG_HOME/registry.sqlite.")

    def registry(self) -> ClipRegistry:
        return ClipRegistry(self.path or avdag_home() / "registry.sqlite")
