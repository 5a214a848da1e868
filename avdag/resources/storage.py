"""Where footage lands and where avdag keeps what it makes."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from avdag.core.ingest.landing import LandingZone
from avdag.settings import avdag_home


class LandingZoneResource(dg.ConfigurableResource):
    """The upload area: a local folder or `s3://bucket/prefix` (s3fs), same code for both."""

    url: str | None = Field(default=None, description="Local path or s3:// URL; default $AVDAG_HOME/landing.")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto, ...).")

    def zone(self) -> LandingZone:
        url = self.url or str(avdag_home() / "landing")
        options: dict = {}
        if url.startswith("s3://"):
            # A sensor lives for days: s3fs's shared instance and listing cache would hide new
            # batches and re-written markers from later ticks.
            options.update(skip_instance_cache=True, use_listings_cache=False)
            if self.s3_endpoint_url:
                options["client_kwargs"] = {"endpoint_url": self.s3_endpoint_url}
        return LandingZone(url, options)


class ArtifactStoreResource(dg.ConfigurableResource):
    """avdag's own folder ($AVDAG_HOME): model builds, caption caches, checkpoints, reports."""

    root: str | None = Field(default=None, description="Default $AVDAG_HOME (or .avdag).")

    def path(self, *parts: str) -> Path:
        base = Path(self.root).resolve() if self.root else avdag_home()
        target = base.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target
