"""Locks and build-once folders for state that concurrent runs and processes share on one machine.

`file_lock` is an advisory `flock` on a `.lock` file beside the thing it guards: it is released
when the holder exits or dies, so a killed run never leaves a lock behind. `build_once` makes a
folder (a checkpoint, the tiny model) exactly once: the first process builds it under the lock,
a concurrent one waits and then reuses the winner's folder instead of rebuilding or deleting it.
A folder counts as built only when its completion marker exists, and the marker is written last.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from avdag.core.common.atomic import atomic_directory

T = TypeVar("T")
COMPLETE_MARKER = "_COMPLETE"


class LockTimeout(TimeoutError):
    """Another process held the lock longer than the caller was willing to wait."""


@contextmanager
def file_lock(guarded: str | Path, timeout_s: float | None = None, poll_s: float = 0.2) -> Iterator[Path]:
    """Hold an exclusive lock on `<guarded>.lock` for the duration of the block."""
    lock_path = Path(str(guarded) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(f"{lock_path} still held by another process after {timeout_s:.0f}s") from None
                time.sleep(poll_s)
        yield lock_path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


def build_once(folder: str | Path, build: Callable[[Path], T], on_reuse: Callable[[Path], T]) -> tuple[T, bool]:
    """Build `folder` with `build(staging)` unless a complete one exists; (result, built_here).

    Under the folder's lock: a complete folder is reused (`on_reuse(folder)`); otherwise `build`
    fills a staging folder, the completion marker is written into it last, and it replaces the
    folder in one rename. Two processes racing for the same folder end with one build.
    """
    folder = Path(folder)
    if is_complete(folder):
        return on_reuse(folder), False
    with file_lock(folder):
        if is_complete(folder):  # built by whoever held the lock before us
            return on_reuse(folder), False
        with atomic_directory(folder) as staging:
            result = build(staging)
            (staging / COMPLETE_MARKER).write_text("")
        return result, True
