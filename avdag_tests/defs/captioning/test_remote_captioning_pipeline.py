"""baseline_captions through the OpenAI-compatible VLM backend: a real HTTP server on loopback, real clips."""

import json
import re

import dagster as dg
import pytest

from avdag.core.common.database import sqlite_url
from avdag.core.common.labels import format_label_as_answer
from avdag.defs.pipeline.partitions import clip_batches
from avdag.demo.sample_batch import REAL_CLIP_DIR, write_sample_batch
from avdag.resources.registry import ClipRegistryResource
from avdag.resources.remote_captioner import OpenAIVlmCaptionerResource
from avdag_tests.support.openai_stub_server import OpenAIStubServer
from avdag_tests.support.pipeline_helpers import ALL_ASSETS, small_resources

BATCH = "batch-remote"
ANSWER = format_label_as_answer(json.loads((REAL_CLIP_DIR / "solidWhiteRight.label.json").read_text()))


@pytest.fixture(scope="module")
def landing(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote_landing")
    write_sample_batch(root, BATCH, n_synthetic=3, seed=5)
    return root


def _materialize(landing, server, instance):
    captioner = OpenAIVlmCaptionerResource(
        model="nvidia/Cosmos-Reason1-7B", base_urls=[server.base_url], max_in_flight=2
    )
    resources = small_resources(
        str(landing),
        clip_registry=ClipRegistryResource(db_url=sqlite_url(landing / "_reg.sqlite")),
        captioner=captioner,
    )
    return dg.materialize(
        ALL_ASSETS,
        selection=["raw_clips", "clip_quarantine", "baseline_captions"],
        partition_key=BATCH,
        resources=resources,
        instance=instance,
        raise_on_error=True,
    )


def test_baseline_captions_come_from_the_server_and_are_cached(landing, tmp_path, monkeypatch):
    monkeypatch.setenv(
        "AVDAG_HOME", str(tmp_path / "home")
    )  # its own assets and instance: nothing leaks into other tests
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(clip_batches.name, [BATCH])
        with OpenAIStubServer(lambda request: ANSWER) as server:
            first = _materialize(landing, server, instance)
            captions = first.output_for_node("baseline_captions")
            assert len(captions) == 4 and len(server.requests) == 4
            assert (captions["fields_ok"] == 15).all() and captions["caption_error"].isna().all()
            assert captions["model_path"].eq("nvidia/Cosmos-Reason1-7B").all()
            assert captions["model_hash"].str.startswith("openai-vlm:").all()
            assert captions["answer_field"].eq("content").all()  # the reply field the answer came from
            # one video per clip (the default transport), with the sampled fps for its time positions
            [video, _] = server.requests[0]["messages"][1]["content"]
            assert video["type"] == "video_url" and video["video_url"]["url"].startswith("data:video/jpeg;base64,")
            assert server.requests[0]["mm_processor_kwargs"]["fps"] > 0
            materialization = instance.get_latest_materialization_event(dg.AssetKey("baseline_captions"))
            table = materialization.asset_materialization.metadata["field_failures"].value
            assert re.search(r"\| weather\s+\|\s+4 \|\s+0 \|\s+0 \|", table), table

            second = _materialize(landing, server, instance)
            assert len(server.requests) == 4, "a re-run must not call the server again"
            assert second.output_for_node("baseline_captions")["cached"].all()
