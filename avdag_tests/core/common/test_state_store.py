"""`StateStore`: the same reads, writes, folders and scratch copies on a local folder and on S3 (moto)."""

import hashlib
import json

import pytest

from avdag.core.common.locks import COMPLETE_MARKER
from avdag.core.common.state_store import ContentMismatchError, StateStore, fetch_verified, storage_options


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return StateStore(str(tmp_path / "state"))
    s3 = request.getfixturevalue("s3")
    s3.reset()
    s3.make_bucket("state-bucket")
    return StateStore("s3://state-bucket/avdag", storage_options("s3://state-bucket/avdag", s3.endpoint_url))


def _model_folder(root):
    folder = root / "built"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights" * 100)
    (folder / "sub" / "config.json").write_text('{"a": 1}')
    (folder / ".avdag_weights_sha256.json").write_text("{}")  # a node-local cache, not content
    return folder


def test_files_round_trip_and_list_by_prefix(store):
    store.write_json("assets/scores/b1.json", {"n": 1})
    store.write_bytes("assets/scores/b2.parquet", b"PAR1")
    store.write_bytes("assets/other.json", b"{}")
    assert store.read_json("assets/scores/b1.json") == {"n": 1}
    assert store.exists("assets/scores/b2.parquet") and not store.exists("assets/scores/b3.parquet")
    assert store.list("assets/scores") == ["assets/scores/b1.json", "assets/scores/b2.parquet"]
    assert store.list("nothing/here") == []
    assert store.read_many(["assets/scores/b1.json", "assets/missing.json"]) == {
        "assets/scores/b1.json": b'{\n  "n": 1\n}\n'
    }
    assert store.key_of(store.uri("assets/scores/b1.json")) == "assets/scores/b1.json"
    assert store.key_of("nvidia/Cosmos-Reason1-7B") is None
    with pytest.raises(FileNotFoundError, match="assets/missing.json"):
        store.read_bytes("assets/missing.json")
    with pytest.raises(ValueError, match="not a key"):
        store.read_bytes("../outside")


def test_a_local_store_is_a_plain_folder_and_writes_leave_no_temp_files(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    store.write_json("reports/latest.json", {"folder": "x"})
    assert store.uri("reports/latest.json") == str(tmp_path / "state" / "reports" / "latest.json")
    assert [p.name for p in (tmp_path / "state" / "reports").iterdir()] == ["latest.json"]
    assert store.fetch("reports/latest.json", tmp_path / "scratch") == tmp_path / "state" / "reports" / "latest.json"
    assert not (tmp_path / "scratch").exists()  # the local default copies nothing


def test_fetch_copies_an_object_into_scratch_once_and_again_when_it_changes(store, tmp_path):
    scratch = tmp_path / "scratch"
    store.write_bytes("catalog/clips.parquet", b"first")
    first = store.fetch("catalog/clips.parquet", scratch)
    assert first.read_bytes() == b"first" and store.fetch("catalog/clips.parquet", scratch) == first
    store.write_bytes("catalog/clips.parquet", b"second!")
    second = store.fetch("catalog/clips.parquet", scratch)
    assert second.read_bytes() == b"second!"
    assert (first == second) == store.is_local  # a changed object gets its own scratch copy
    with pytest.raises(FileNotFoundError, match="catalog/none.parquet"):
        store.fetch("catalog/none.parquet", scratch)


def test_a_folder_is_complete_only_with_its_marker_written_last(store, tmp_path):
    folder = _model_folder(tmp_path)
    assert not store.is_complete("checkpoints/sft-1")
    written = []
    if not store.is_local:
        put, pipe = store.fs.put_file, store.fs.pipe_file
        store.fs.put_file = lambda src, dst, **kw: (written.append(dst), put(src, dst, **kw))[1]
        store.fs.pipe_file = lambda dst, data, **kw: (written.append(dst), pipe(dst, data, **kw))[1]
    manifest = store.put_folder(folder, "checkpoints/sft-1")
    assert sorted(manifest["files"]) == ["model.safetensors", "sub/config.json"]  # the hidden cache stays local
    assert manifest["files"]["model.safetensors"]["sha256"] == hashlib.sha256(b"weights" * 100).hexdigest()
    assert store.is_complete("checkpoints/sft-1")
    assert json.loads(store.read_bytes(f"checkpoints/sft-1/{COMPLETE_MARKER}")) == manifest
    if not store.is_local:
        assert len(written) == 3 and written[-1].endswith(f"checkpoints/sft-1/{COMPLETE_MARKER}")
    with pytest.raises(FileNotFoundError, match="sft-2 is not a complete folder"):
        store.fetch_folder("checkpoints/sft-2", tmp_path / "scratch")


def test_fetch_folder_downloads_once_verifies_and_refreshes_a_changed_folder(store, tmp_path):
    scratch = tmp_path / "scratch"
    store.put_folder(_model_folder(tmp_path), "models/tiny")
    copy = store.fetch_folder("models/tiny", scratch)
    assert (copy / "model.safetensors").read_bytes() == b"weights" * 100
    assert (copy / "sub" / "config.json").read_text() == '{"a": 1}'
    if store.is_local:
        assert copy == store.local_path("models/tiny")
        return
    assert scratch in copy.parents
    (copy / "sub" / "config.json").write_text("touched locally")  # reused as is: the markers agree
    assert (store.fetch_folder("models/tiny", scratch) / "sub" / "config.json").read_text() == "touched locally"
    store.put_folder(_refolder(tmp_path, b"retrained"), "models/tiny")
    assert (store.fetch_folder("models/tiny", scratch) / "model.safetensors").read_bytes() == b"retrained"
    store.write_bytes("models/tiny/model.safetensors", b"corrupted after the marker")
    (copy / COMPLETE_MARKER).unlink()
    with pytest.raises(ContentMismatchError, match="model.safetensors"):
        store.fetch_folder("models/tiny", scratch)


def _refolder(tmp_path, weights: bytes):
    folder = tmp_path / "rebuilt"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "sub" / "config.json").write_text('{"a": 1}')
    return folder


def test_publish_folder_builds_once_and_other_nodes_fetch_it(store, tmp_path):
    builds = []

    def build(staging):
        builds.append(staging)
        (staging / "model.safetensors").write_bytes(b"tiny")

    here = store.publish_folder("models/tiny", build, tmp_path / "node-a")
    assert store.is_complete("models/tiny") and (here / "model.safetensors").read_bytes() == b"tiny"
    there = store.publish_folder("models/tiny", build, tmp_path / "node-b")
    assert len(builds) == 1 and (there / "model.safetensors").read_bytes() == b"tiny"
    if not store.is_local:
        assert tmp_path / "node-b" in there.parents  # fetched, not built, on the second node


def test_fetch_verified_checks_the_recorded_sha256(store, tmp_path, request):
    data = b"\x00\x00\x00\x18ftypmp42 video bytes"
    sha = hashlib.sha256(data).hexdigest()
    if store.is_local:
        source = tmp_path / "landing" / "clip.mp4"
        source.parent.mkdir()
        source.write_bytes(data)
        url, options = str(source), {}
    else:
        store.write_bytes("landing/clip.mp4", data)
        url, options = (
            store.uri("landing/clip.mp4"),
            storage_options(store.url, request.getfixturevalue("s3").endpoint_url),
        )
    local = fetch_verified(url, sha, tmp_path / "scratch", options)
    assert local.read_bytes() == data
    assert (local == source) if store.is_local else (local.name == f"{sha}.mp4")
    with pytest.raises(ContentMismatchError, match="clip.mp4"):
        fetch_verified(url, "0" * 64, tmp_path / "scratch", options)
