"""Locks and build-once folders under real concurrent processes."""

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from avdag.core.common.atomic import atomic_directory
from avdag.core.common.locks import COMPLETE_MARKER, LockTimeout, build_once, file_lock, is_complete


def _build_in_process(folder: str, log: str, start_at: float) -> None:
    def build(staging: Path) -> str:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough for the other process to arrive while this one builds
        (staging / "weights.bin").write_bytes(os.urandom(64))
        return "built"

    while time.time() < start_at:
        time.sleep(0.005)
    result, built = build_once(folder, build, on_reuse=lambda path: "reused")
    with open(log + ".results", "a") as f:
        f.write(f"{result} {built}\n")


def test_two_processes_racing_for_one_folder_build_it_once(tmp_path):
    folder, log = tmp_path / "models" / "tiny", str(tmp_path / "builders.log")
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 2.0
    workers = [context.Process(target=_build_in_process, args=(str(folder), log, start_at)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(Path(log).read_text().split()) == 1  # one build
    assert sorted(Path(log + ".results").read_text().splitlines()) == ["built True", "reused False", "reused False"]
    assert is_complete(folder) and (folder / "weights.bin").stat().st_size == 64
    assert sorted(p.name for p in folder.parent.iterdir()) == ["tiny", "tiny.lock"]  # no staging left


def test_a_failed_build_leaves_nothing_and_the_next_one_builds(tmp_path):
    folder = tmp_path / "ckpt"

    def broken(staging: Path):
        (staging / "half.bin").write_bytes(b"x")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        build_once(folder, broken, on_reuse=lambda p: None)
    assert not folder.exists()
    _, built = build_once(folder, lambda staging: (staging / "ok").write_text("1"), on_reuse=lambda p: None)
    assert built and (folder / COMPLETE_MARKER).exists()


def test_the_lock_is_exclusive_across_processes_and_released_when_the_holder_dies(tmp_path):
    guarded = tmp_path / "ledger"
    context = multiprocessing.get_context("spawn")
    holder = context.Process(target=_hold_lock, args=(str(guarded), 30))
    holder.start()
    deadline = time.time() + 20
    while not (tmp_path / "held").exists() and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(LockTimeout, match="ledger.lock"):
        with file_lock(guarded, timeout_s=0.5):
            pass
    holder.kill()
    holder.join()
    with file_lock(guarded, timeout_s=5):  # the kernel released the dead holder's lock
        pass


def _hold_lock(guarded: str, seconds: float) -> None:
    with file_lock(guarded):
        Path(guarded).with_name("held").touch()
        time.sleep(seconds)


def test_atomic_directory_keeps_a_live_writers_staging_and_clears_a_dead_ones(tmp_path):
    target = tmp_path / "ckpt"
    live = tmp_path / f".ckpt.staging-{os.getpid()}-abc"  # this very process: alive
    dead = tmp_path / ".ckpt.staging-999999999-abc"  # no such pid
    live.mkdir()
    dead.mkdir()
    with atomic_directory(target) as staging:
        (staging / "file").write_text("x")
    assert live.exists() and not dead.exists() and (target / "file").exists()
