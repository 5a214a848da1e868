"""Reading one cosmos-rl run's console output: steps, losses, exports, error lines, and whether it finished.

The exit code cannot say whether training finished: cosmos-rl's launcher exits 0 when a training
replica crashes (it logs `Process N failed with return code R` and the controller shuts down
cleanly), and by then the replica has exported at every `save_freq` steps in the same layout as the
final export. What does say it is the rank-0 console line `Step: i/N, Loss: …` (printed after every
optimizer step; `Exported safetensors to <dir>` follows the saves): a finished run's last step line
has i = N and its export is `safetensors/step_N`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

# `Step: 12/300, Loss: 0.84210, Grad norm: …` (SFT worker, 0.2.x to 0.4.x). The checkpoint
# message `[Policy] Step: 12, checkpoint saved …` has no `/N` and is not a step line.
STEP_LINE = re.compile(r"\bStep: (\d+)/(\d+), Loss: ([-+]?(?:nan|inf|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))", re.IGNORECASE)
EXPORT_LINE = re.compile(r"Exported safetensors to (\S.*?)\s*$")
EXPORT_DIR_NAME = re.compile(r"step_(\d+)")

# Lines that say what went wrong in a replica, torchrun or the launcher: a traceback's start and
# its exception line (`RuntimeError: …`, `torch.OutOfMemoryError: …`, under torchrun prefixed
# `[rank0]:`), cosmos-rl's logger at ERROR, torchrun's failure summary and the launcher's verdict.
ERROR_LINE = re.compile(
    r"Traceback \(most recent call last\)"
    r"|^\s*(?:\[rank\d+\]:\s*)?(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)(?::|\s*$)"
    r"| - (?:ERROR|CRITICAL) - "
    r"|failed with return code|exited with code|ChildFailedError|\bexitcode\s*:"
    r"|CUDA out of memory|NCCL error|Segmentation fault|\bSIG(?:KILL|SEGV|ABRT|BUS)\b"
)
# Prefixes that differ between copies of one error (8 ranks print the same traceback).
_VARYING_PREFIX = re.compile(
    r"^\s*(?:\[rank\d+\]:\s*)?(?:\[cosmos\]\s+\S+\s+\S+\s+-\s+|[EWIF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+\s+)?"
)
FIRST_ERROR_LINES = 15  # the root cause comes first ...
LAST_ERROR_LINES = 5  # ... and the launcher's verdict last
MAX_LINE_CHARS = 500


@dataclass
class ErrorLines:
    """The distinct error lines of a log, the first and the last few of them (a crashed 8-rank job
    repeats one traceback per rank, with differing prefixes)."""

    first: list[str] = field(default_factory=list)
    last: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_ERROR_LINES))
    count: int = 0
    _seen: set[str] = field(default_factory=set)

    def feed(self, line: str) -> None:
        if not ERROR_LINE.search(line):
            return
        key = _VARYING_PREFIX.sub("", line).strip()
        if key in self._seen:
            return
        if len(self._seen) < 10_000:
            self._seen.add(key)
        self.count += 1
        line = line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + " …"
        if len(self.first) < FIRST_ERROR_LINES:
            self.first.append(line)
        else:
            self.last.append(line)

    def lines(self) -> list[str]:
        skipped = self.count - len(self.first) - len(self.last)
        return [*self.first, *([f"… {skipped} more error lines …"] if skipped else []), *self.last]


@dataclass
class RunLog:
    """What one cosmos-rl run printed, fed line by line as it arrives."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    last_step: int | None = None
    total_steps: int | None = None
    exported: str | None = None  # the last `Exported safetensors to` path, as printed
    errors: ErrorLines = field(default_factory=ErrorLines)

    def feed(self, line: str) -> tuple[int, int, float] | None:
        """Take one line; a step line comes back as (step, total, loss)."""
        self.errors.feed(line)
        if export := EXPORT_LINE.search(line):
            self.exported = export[1]
        if step := STEP_LINE.search(line):
            event = int(step[1]), int(step[2]), float(step[3])
            self.last_step, self.total_steps = event[0], event[1]
            self.losses.append((event[0], event[2]))
            return event
        return None

    @property
    def finished(self) -> bool:
        return self.last_step is not None and self.last_step == self.total_steps

    def last_step_text(self) -> str:
        return "none (no 'Step: i/N' line)" if self.last_step is None else f"{self.last_step}/{self.total_steps}"


def export_step(export_dir: str | Path) -> int | None:
    """The step of a `safetensors/step_N` export folder; None for any other name."""
    match = EXPORT_DIR_NAME.fullmatch(Path(export_dir).name)
    return int(match[1]) if match else None


def unfinished_reason(run: RunLog, export_dir: str | Path | None) -> str | None:
    """Why `export_dir` is not the finished run's checkpoint, or None when it is.

    It is when the last step line reached its total and the export is that step's: an earlier
    `save_freq` export, or one left by an earlier attempt in the same job folder, is not.
    """
    if not run.finished:
        return "training stopped before its final step"
    if export_dir is None:
        return None  # finished, but nothing to install: the caller says so
    step = export_step(export_dir)
    if step != run.last_step:
        found = f"step {step}" if step is not None else "an unrecognised folder name"
        return f"the export found is {found}, not the final step {run.total_steps}"
    return None
