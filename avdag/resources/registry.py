"""The cross-batch dedup registry, as a resource (in the database `AVDAG_DB_URL` names)."""

import dagster as dg
from pydantic import Field

from avdag.core.ingest.registry import ClipRegistry
from avdag.resources.legacy_state import import_legacy
from avdag.settings import avdag_home, default_db_url


class ClipRegistryResource(dg.ConfigurableResource):
    """Knows every video's sha256 and the clip it belongs to, across all batches."""

    db_url: str | None = Field(
        default=None, description="sqlite:///... or postgresql://... (AVDAG_DB_URL); default $AVDAG_HOME/avdag.sqlite."
    )

    def registry(self) -> ClipRegistry:
        registry = ClipRegistry(self.db_url or default_db_url())
        import_legacy(registry.import_legacy, avdag_home() / "registry.sqlite", "clip registrations", registry.db)
        return registry
