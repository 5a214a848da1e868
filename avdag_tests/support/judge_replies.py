"""Reply functions for `OpenAIStubServer` that answer per item and count how often each item was asked."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

from avdag_tests.support.openai_stub_server import StubReply


def score_for(answer: str) -> int:
    """A deterministic score per item, so a verdict landing on the wrong item shows."""
    return sum(map(ord, answer)) % 5 + 1


class CountedReplies:
    """reply_fn: `script(answer, nth)` answers the n-th ask of an item (default: `score_for` the answer).

    Subclasses say how a request names its item (`answer_in`): the tests' judge templates differ.
    """

    def __init__(self, script: Callable[[str, int], str | StubReply] | None = None) -> None:
        self.script = script or (lambda answer, nth: f"Fine. <answer>{score_for(answer)}</answer>")
        self.asked: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    @staticmethod
    def answer_in(request: dict[str, Any]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, request: dict[str, Any]) -> str | StubReply:
        answer = self.answer_in(request)
        with self._lock:
            self.asked[answer] += 1
            nth = self.asked[answer]
        return self.script(answer, nth)
