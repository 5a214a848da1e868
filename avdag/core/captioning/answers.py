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

from avdag.core.common.labels import FIELDS, field_issue

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)(</answer>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)(```|$)", re.DOTALL | re.IGNORECASE)


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
        data = _salvage_fields(candidate)
        if not data:
            return ParsedAnswer(None, error, field_status=dict.fromkeys(FIELDS, "missing"))
        repaired = True
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
    depth = 0
    inside, _ = _string_mask(text)
    for i in range(start, len(text)):
        if inside[i]:
            continue
        if text[i] in "{[":
            depth += 1
        elif text[i] in "}]":
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
    repaired = _close_open_structures(_python_literals_to_json(_drop_trailing_commas(text)))
    try:
        value = json.loads(repaired)
    except ValueError:
        return None, False, first_error
    if not isinstance(value, dict):
        return None, False, "reply JSON is not an object"
    return value, True, None


def _string_mask(text: str) -> tuple[list[bool], bool]:
    """Per character: is it part of a string literal (quotes included)? And does the text end in one?"""
    mask, in_string, escaped = [], False, False
    for ch in text:
        if in_string:
            mask.append(True)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        else:
            in_string = ch == '"'
            mask.append(in_string)
    return mask, in_string


def _python_literals_to_json(text: str) -> str:
    """True/False/None outside strings become JSON literals."""
    replacements = {"True": "true", "False": "false", "None": "null"}
    inside, _ = _string_mask(text)
    out, i = [], 0
    while i < len(text):
        word = None if inside[i] else next((w for w in replacements if text.startswith(w, i)), None)
        if word and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            out.append(replacements[word])
            i += len(word)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _drop_trailing_commas(text: str) -> str:
    """Remove commas that directly precede a closing bracket, outside strings only."""
    inside, _ = _string_mask(text)
    out: list[str] = []
    for ch, in_string in zip(text, inside):
        if not in_string and ch in "}]":
            while out and out[-1].isspace():
                out.pop()
            if out and out[-1] == ",":
                out.pop()
        out.append(ch)
    return "".join(out)


def _close_open_structures(text: str) -> str:
    """Close a string, array or object left open by a reply cut at the token limit."""
    inside, ends_in_string = _string_mask(text)
    stack: list[str] = []
    for ch, in_string in zip(text, inside):
        if in_string:
            continue
        if ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    body = (text + ('"' if ends_in_string else "")).rstrip()
    body = re.sub(r",\s*$", "", body)
    body = re.sub(r',?\s*"[^"]*"\s*:\s*$', "", body)  # a key with no value yet
    if stack and stack[-1] == "}":
        body = re.sub(r'(?<=[{,])\s*"[^"]*"$', "", body).rstrip().rstrip(",")  # a key cut mid-name
    return body + "".join(reversed(stack))


def _salvage_fields(text: str) -> dict[str, Any]:
    """Last resort for a broken object: decode each rubric field's value where it stands.

    Keeps the fields whose `"name": <value>` decodes as JSON (first occurrence wins) and drops
    the rest, so one garbled field does not cost the other fourteen.
    """
    decoder = json.JSONDecoder()
    found: dict[str, Any] = {}
    for name in FIELDS:
        match = re.search(rf'"{re.escape(name)}"\s*:\s*', text)
        if not match:
            continue
        fragment = _python_literals_to_json(text[match.end() :])
        try:
            value, end = decoder.raw_decode(fragment)
        except ValueError:
            continue
        if fragment[end:].lstrip()[:1] in (",", "}", ""):  # the value ends where a value should
            found[name] = value
    return found


def _field_status(data: dict[str, Any]) -> dict[str, str]:
    status = {}
    for name in FIELDS:
        if name not in data:
            status[name] = "missing"
        else:
            issue = field_issue(name, data[name])
            status[name] = f"invalid: {issue}" if issue else "ok"
    return status
