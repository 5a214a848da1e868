"""Tests for avdag.core.common.atomic (atomic writes) and avdag.core.common.model_identity (model fingerprints)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from avdag.core.common.atomic import atomic_path, write_bytes_atomic, write_json_atomic
from avdag.core.common.model_identity import model_fingerprint, weights_sha256

# --- atomic ---------------------------------------------------------------------------------------


def test_write_json_atomic_writes_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out" / "state.json"  # parent does not exist yet
    value = {"b": [1, 2], "a": "caf\u00e9 \u2011"}
    write_json_atomic(target, value)
    assert json.loads(target.read_text(encoding="utf-8")) == value
    assert "caf\u00e9" in target.read_text(encoding="utf-8")  # ensure_ascii=False
    assert target.read_text(encoding="utf-8").endswith("\n")
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_write_json_atomic_replaces_existing(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"v": 1})
    write_json_atomic(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}
    assert os.listdir(tmp_path) == ["state.json"]


def test_write_bytes_atomic(tmp_path):
    target = tmp_path / "blob.bin"
    write_bytes_atomic(target, b"\x00\x01abc")
    assert target.read_bytes() == b"\x00\x01abc"
    assert os.listdir(tmp_path) == ["blob.bin"]


def test_atomic_path_yields_a_sibling_temp_then_renames(tmp_path):
    target = tmp_path / "data.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp != target
        tmp.write_text("new")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert not tmp.exists()
    assert os.listdir(tmp_path) == ["data.txt"]


def test_exception_inside_atomic_path_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "data.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["data.txt"]


def test_exception_inside_atomic_path_creates_nothing_when_no_old_file(tmp_path):
    target = tmp_path / "fresh.txt"
    with pytest.raises(KeyError):
        with atomic_path(target) as tmp:
            tmp.write_text("x")
            raise KeyError("x")
    assert os.listdir(tmp_path) == []


def test_failed_json_serialisation_keeps_old_file(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"v": object()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["state.json"]


# --- model identity -------------------------------------------------------------------------------


def make_model(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_weights_sha256_is_hash_of_concatenation_in_name_order(tmp_path):
    a, b = b"first shard " * 100, b"second shard " * 50
    # written in reverse order so the name order, not creation order, must be used
    model = make_model(tmp_path / "m", {"model-00002-of-00002.safetensors": b, "model-00001-of-00002.safetensors": a})
    (model / "config.json").write_text("{}")  # not a weight file
    expected = hashlib.sha256(a + b).hexdigest()
    assert weights_sha256(model) == expected
    assert weights_sha256(str(model)) == expected  # cached path
    assert expected != hashlib.sha256(b + a).hexdigest()


def test_weights_sha256_changes_when_a_file_changes_size(tmp_path):
    model = make_model(tmp_path / "m", {"a.safetensors": b"aaaa", "b.safetensors": b"bbbb"})
    before = weights_sha256(model)
    (model / "b.safetensors").write_bytes(b"bbbbb")
    after = weights_sha256(model)
    assert after != before
    assert after == hashlib.sha256(b"aaaabbbbb").hexdigest()


def test_weights_sha256_changes_when_same_size_file_is_rewritten(tmp_path):
    model = make_model(tmp_path / "m", {"a.safetensors": b"aaaa", "b.safetensors": b"bbbb"})
    before = weights_sha256(model)
    path = model / "a.safetensors"
    stat = path.stat()
    path.write_bytes(b"zzzz")
    # make sure the rewrite is visible in mtime even on a coarse-clock file system
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = weights_sha256(model)
    assert after != before
    assert after == hashlib.sha256(b"zzzzbbbb").hexdigest()


def test_weights_sha256_changes_when_a_file_is_added(tmp_path):
    model = make_model(tmp_path / "m", {"a.safetensors": b"aaaa"})
    before = weights_sha256(model)
    (model / "b.safetensors").write_bytes(b"bb")
    assert weights_sha256(model) != before
    assert weights_sha256(model) == hashlib.sha256(b"aaaabb").hexdigest()


def test_two_copies_of_the_same_weights_agree(tmp_path):
    files = {"x.safetensors": b"\x01" * 1000, "y.safetensors": b"\x02" * 10}
    assert weights_sha256(make_model(tmp_path / "one", files)) == weights_sha256(make_model(tmp_path / "two", files))


def test_weights_sha256_works_when_cache_cannot_be_written(tmp_path):
    """A cache path that cannot be read or written (here: a directory) still gives the hash."""
    model = make_model(tmp_path / "m", {"a.safetensors": b"abc"})
    (model / ".avdag_weights_sha256.json").mkdir()
    assert weights_sha256(model) == hashlib.sha256(b"abc").hexdigest()
    (model / "a.safetensors").write_bytes(b"abcd")
    assert weights_sha256(model) == hashlib.sha256(b"abcd").hexdigest()


def test_corrupt_cache_is_ignored(tmp_path):
    model = make_model(tmp_path / "m", {"a.safetensors": b"abc"})
    (model / ".avdag_weights_sha256.json").write_text("{not json")
    assert weights_sha256(model) == hashlib.sha256(b"abc").hexdigest()


def test_weights_sha256_without_safetensors_raises(tmp_path):
    model = make_model(tmp_path / "m", {"pytorch_model.bin": b"x", "config.json": b"{}"})
    with pytest.raises(FileNotFoundError, match="safetensors"):
        weights_sha256(model)


def test_weights_sha256_ignores_nested_safetensors(tmp_path):
    model = make_model(tmp_path / "m", {"a.safetensors": b"top"})
    make_model(model / "sub", {"b.safetensors": b"nested"})
    assert weights_sha256(model) == hashlib.sha256(b"top").hexdigest()


def test_model_fingerprint_of_local_checkpoint(tmp_path):
    model = make_model(tmp_path / "m", {"a.safetensors": b"abc"})
    assert model_fingerprint(str(model)) == "sha256:" + hashlib.sha256(b"abc").hexdigest()[:16]


@pytest.mark.parametrize("model_id", ["nvidia/Cosmos-Reason1-7B", "Qwen/Qwen2.5-VL-3B-Instruct", "no-such-dir-xyz"])
def test_model_fingerprint_of_hub_id(model_id):
    assert model_fingerprint(model_id) == f"hub:{model_id}"


def test_model_fingerprint_of_local_folder_without_weights_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        model_fingerprint(str(tmp_path / "empty"))
