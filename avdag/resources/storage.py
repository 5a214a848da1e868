"""Where footage lands (the landing zone) and where avdag keeps what it makes (the state store)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from avdag.core.common.state_store import StateStore, fetch_verified, storage_options
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


class StateStoreResource(dg.ConfigurableResource):
    """Where everything that outlives a step lives (AVDAG_STATE_URL), and this node's scratch for local copies.

    Asset values, the caption cache, checkpoints, the tiny model, reports and the catalog are
    stored under `url`; a step that needs one of them (or a clip's video) on local disk fetches it
    into `scratch` and passes on the stored URL, never the local path, so the next step may run
    on another node.
    """

    url: str | None = Field(default=None, description="Local folder or s3://bucket/prefix; default $AVDAG_HOME.")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto, ...) of the store and of s3:// clip sources."
    )
    scratch_dir: str | None = Field(default=None, description="Node-local copies; default $AVDAG_HOME/scratch.")

    def store(self) -> StateStore:
        url = self.url or str(avdag_home())
        return StateStore(url, storage_options(url, self.s3_endpoint_url))

    def scratch(self) -> Path:
        return Path(self.scratch_dir).resolve() if self.scratch_dir else avdag_home() / "scratch"

    def local_model(self, model: str) -> str:
        """A folder `from_pretrained` loads for `model`: a folder of an object store is fetched into
        scratch; a hub id or a local folder (a local store's included) is used as it is."""
        store = self.store()
        key = store.key_of(model)
        return model if key is None or store.is_local else str(store.fetch_folder(key, self.scratch()))

    def video(self, source_url: str, sha256: str) -> Path:
        """A clip's video on this node, fetched by its source URL and checked against its registered sha256."""
        return fetch_verified(source_url, sha256, self.scratch(), storage_options(source_url, self.s3_endpoint_url))
