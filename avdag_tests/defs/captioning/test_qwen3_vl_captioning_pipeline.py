"""baseline_captions with the embedded tiny Qwen3-VL (Cosmos-Reason2's architecture): one batch, real assets."""

import dagster as dg

from avdag.core.common.database import sqlite_url
from avdag.defs.pipeline.code_versions import code_versions
from avdag.defs.pipeline.partitions import clip_batches
from avdag.demo.sample_batch import write_sample_batch
from avdag.resources.captioner import CaptionerResource
from avdag.resources.registry import ClipRegistryResource
from avdag_tests.support.pipeline_helpers import ALL_ASSETS, small_resources

BATCH = "batch-qwen3"


def test_the_per_batch_captioning_runs_on_a_qwen3_vl_model(tmp_path, monkeypatch):
    monkeypatch.setenv("AVDAG_HOME", str(tmp_path / "home"))  # its own assets and instance
    landing = tmp_path / "landing"
    write_sample_batch(landing, BATCH, n_synthetic=1, seed=3)
    captioner = CaptionerResource(model="embedded:tiny-qwen3-vl", max_new_tokens=8)
    resources = small_resources(
        str(landing),
        clip_registry=ClipRegistryResource(db_url=sqlite_url(landing / "_reg.sqlite")),
        captioner=captioner,
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(clip_batches.name, [BATCH])
        result = dg.materialize(
            ALL_ASSETS,
            selection=["raw_clips", "clip_quarantine", "baseline_captions"],
            partition_key=BATCH,
            resources=resources,
            instance=instance,
            raise_on_error=True,
        )
    captions = result.output_for_node("baseline_captions")
    assert len(captions) == 2 and captions["caption_error"].isna().all()
    assert captions["model_path"].str.endswith("models/tiny-qwen3-vl").all()
    assert (captions["new_tokens"] > 0).all()
    # The family is part of the captions' code version: the same settings on a Qwen2.5-VL differ.
    qwen2 = code_versions({**resources, "captioner": CaptionerResource(max_new_tokens=8)})
    assert code_versions(resources)["baseline_captions"] != qwen2["baseline_captions"]
