"""Turn a model's raw reply into the 15-field answer, repairing what is safely repairable.

Models wrap JSON in ```json fences, prepend <think> sections, use Python literals, leave
trailing commas, or stop mid-object at the token limit. The raw text is always kept by the
caller; this module says what could be recovered and, per field, what is wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from avdag.core.labels import FIELDS, field_issue

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)(</answer>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)(```|$)", re.DOTALL | re.IGNORECASE)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


@dataclass(frozen=True)
class ParsedAnswer:
    data: dict[str, Any] | None
    error: str | None = None
    repaired: bool = False
    field_status: dict[str, str] = field(default_factory=dict)  # field -> "ok" | "missing" | "invalid: ..."

    @property
    def ok(self) -> bool:
        return self.data is not None


def parse_answer(raw: str) -> ParsedAnswer:
    """Best-effort JSON object from a reply; `data` is None when nothing object-like is there."""
    candidate = _extract_object_text(raw)
    if candidate is None:
        return ParsedAnswer(None, "no JSON object in the reply", field_status=dict.fromkeys(FIELDS, "missing"))
    data, repaired, error = _loads_with_repair(candidate)
    if data is None:
        return ParsedAnswer(None, error, field_status=dict.fromkeys(FIELDS, "missing"))
    return ParsedAnswer(data, None, repaired, _field_status(data))


def answer_is_complete(text: str) -> bool:
    """True once the reply holds a whole top-level JSON object: generation can stop there."""
    body = _strip_wrappers(text)
    start = body.find("{")
    return start >= 0 and _matching_brace(body, start) is not None


def _strip_wrappers(raw: str) -> str:
    text = _THINK.sub("", raw)
    tagged = _ANSWER_TAG.search(text)
    if tagged:
        text = tagged.group(1)
    fenced = _FENCE.search(text)
    if fenced and "{" in fenced.group(1):
        text = fenced.group(1)
    return text


def _extract_object_text(raw: str) -> str | None:
    body = _strip_wrappers(raw)
    start = body.find("{")
    if start < 0:
        return None
    end = _matching_brace(body, start)
    return body[start : end + 1] if end is not None else body[start:]


def _matching_brace(text: str, start: int) -> int | None:
    """Index of the brace closing the object opened at `start`, honouring strings."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i
    return None


def _loads_with_repair(text: str) -> tuple[dict | None, bool, str | None]:
    try:
        value = json.loads(text)
        return (value, False, None) if isinstance(value, dict) else (None, False, "reply JSON is not an object")
    except ValueError as exc:
        first_error = f"invalid JSON: {exc}"
    repaired = _close_open_structures(_python_literals_to_json(_TRAILING_COMMA.sub(r"\1", text)))
    try:
        value = json.loads(repaired)
    except ValueError:
        return None, False, first_error
    if not isinstance(value, dict):
        return None, False, "reply JSON is not an object"
    return value, True, None


def _python_literals_to_json(text: str) -> str:
    """True/False/None outside strings become JSON literals."""
    out, in_string, escaped, i = [], False, False, 0
    replacements = {"True": "true", "False": "false", "None": "null"}
    while i < len(text):
        ch = text[i]
        if in_string:
            escaped = (ch == "\\") and not escaped
            if ch == '"' and not escaped:
                in_string = False
        elif ch == '"':
            in_string = True
        else:
            word = next((w for w in replacements if text.startswith(w, i)), None)
            if word and not (i and text[i - 1].isalnum()):
                out.append(replacements[word])
                i += len(word)
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _close_open_structures(text: str) -> str:
    """Close a string, array or object left open by a reply cut at the token limit."""
    stack, in_string, escaped = [], False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    tail = '"' if in_string else ""
    body = (text + tail).rstrip()
    body = re.sub(r',\s*$', "", body)
    body = re.sub(r',?\s*"[^"]*"\s*:\s*$', "", body)  # a key with no value yet
    return body + "".join(reversed(stack))


def _field_status(data: dict[str, Any]) -> dict[str, str]:
    status = {}
    for name in FIELDS:
        if name not in data:
            status[name] = "missing"
        else:
            issue = field_issue(name, data[name])
            status[name] = f"invalid: {issue}" if issue else "ok"
    return status
