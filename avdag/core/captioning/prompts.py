"""Prompt folders: load, check and hash the captioning and judging prompts.

A folder holds `system_prompt.txt` and `user_prompt.txt` (captioning) and, optionally,
`judge_system.txt`, `judge_user.txt` and the judge questions (`questions.json`, or the recipe's
`score_question.json`). The recipe's own folder has only the captioning prompts and
`score_question.json`, so judge files it lacks come from the project's `prompts/` folder; the
source of every file is recorded, and every file is part of the hash, so changing any prompt
marks what was made with it as stale.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from avdag.core.common.labels import FIELDS
from avdag.core.common.package_files import project_prompts_dir

PROJECT_PROMPTS_DIR = project_prompts_dir()
CAPTION_FILES = ("system_prompt.txt", "user_prompt.txt")
JUDGE_FILES = ("judge_system.txt", "judge_user.txt")
QUESTION_FILES = ("questions.json", "score_question.json")


class PromptError(ValueError):
    """A prompt folder is missing a file or a file is malformed; the message names it."""


@dataclass(frozen=True)
class PromptSet:
    system_prompt: str
    user_prompt: str
    judge_system: str
    judge_user: str
    questions: dict[str, str]
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def caption_hash(self) -> str:
        """Identifies what the captioner was asked: changes when either caption prompt changes."""
        return _digest(self.system_prompt, self.user_prompt)

    @property
    def judge_hash(self) -> str:
        """Identifies what the judge was asked: its prompts and all questions."""
        return _digest(self.judge_system, self.judge_user, json.dumps(self.questions, sort_keys=True))


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def load_prompt_set(folder: str | Path | None = None, fallback: Path = PROJECT_PROMPTS_DIR) -> PromptSet:
    """Load a prompt folder; judge prompts and questions it lacks come from `fallback`."""
    folder = Path(folder) if folder else fallback
    if not folder.is_dir():
        raise PromptError(f"prompt folder {folder} does not exist")
    texts: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name in CAPTION_FILES:
        path = folder / name
        if not path.is_file():
            raise PromptError(f"{path}: missing (a prompt folder needs {', '.join(CAPTION_FILES)})")
        texts[name], sources[name] = _read_text(path), str(path)
    for name in JUDGE_FILES:
        path = folder / name if (folder / name).is_file() else fallback / name
        texts[name], sources[name] = _read_text(path), str(path)
    question_path = _find_questions(folder) or _find_questions(fallback)
    if question_path is None:
        raise PromptError(f"{folder}: no judge questions ({' or '.join(QUESTION_FILES)})")
    sources["questions"] = str(question_path)
    return PromptSet(
        system_prompt=texts["system_prompt.txt"],
        user_prompt=texts["user_prompt.txt"],
        judge_system=texts["judge_system.txt"],
        judge_user=texts["judge_user.txt"],
        questions=_load_questions(question_path),
        sources=sources,
    )


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"{path}: cannot read ({exc})") from exc
    if not text.strip():
        raise PromptError(f"{path}: empty")
    return text


def _find_questions(folder: Path) -> Path | None:
    for name in QUESTION_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _load_questions(path: Path) -> dict[str, str]:
    try:
        questions = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PromptError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(questions, dict) or not all(isinstance(v, str) for v in questions.values()):
        raise PromptError(f"{path}: expected an object mapping field names to question strings")
    unknown = sorted(set(questions) - set(FIELDS))
    if unknown:
        raise PromptError(f"{path}: questions for unknown fields {unknown}")
    return questions
