"""Client-side pacing under a provider's rate limits, shared by every worker thread of a judge.

An OpenAI key has a requests- and a tokens-per-minute quota; past it the API answers 429. Under a
big run that is the normal state, not a failure, so calls are paced to avoid 429s rather than
retried until a retry count runs out:

- a `TokenBucket` per quota paces calls to the configured requests/tokens per minute, or to the
  limit the `x-ratelimit-limit-*` headers announce (the lower of the two), and is drained to what
  `x-ratelimit-remaining-*` says is left, so the client never believes in more than the server has;
- without a known rate, a quota reported empty pauses every call until its `x-ratelimit-reset-*`;
- `AimdWindow` adapts the calls allowed in flight: halved on a 429, grown again on success.

Every wait ends by the run's deadline (`WaitBoundReached` otherwise), so a run is bounded by time.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Pace a little under the limit: at exactly the limit any jitter in arrival meets an empty server bucket.
PACE_FRACTION = 0.95
# A bucket saves at most this many seconds of its rate, so an idle spell does not end in a burst.
BURST_S = 1.0
# Before any limit is known, start with this many calls in flight and let successes grow it.
INITIAL_IN_FLIGHT = 32

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str | None) -> float | None:
    """Seconds in OpenAI's reset format ("1s", "6m0s", "20ms", "1h2m3.5s") or a bare number; None if unreadable."""
    if text is None:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class QuotaHeaders:
    """What a response says about one quota ("requests" or "tokens"); None where a header is absent."""

    limit_per_minute: float | None
    remaining: float | None
    reset_s: float | None

    @classmethod
    def read(cls, headers: Mapping[str, str], kind: str) -> QuotaHeaders:
        return cls(
            _number(headers.get(f"x-ratelimit-limit-{kind}")),
            _number(headers.get(f"x-ratelimit-remaining-{kind}")),
            parse_duration_s(headers.get(f"x-ratelimit-reset-{kind}")),
        )


class TokenBucket:
    """Units (requests or tokens) refilled at a per-minute rate, holding at most BURST_S seconds' worth.

    `reserve` takes units now and says how long to wait before using them; it may overdraw the
    bucket, and the debt makes the next reservation wait longer, so waiting threads form a queue
    instead of all waking at once. Without a rate (none configured, none announced) it never waits.
    """

    def __init__(self, per_minute: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._configured = per_minute
        self._rate: float | None = None  # units per second
        self._level = 0.0
        self._updated = clock()
        if per_minute is not None:
            self._set_rate(per_minute)

    @property
    def paced(self) -> bool:
        return self._rate is not None

    def _capacity(self) -> float:
        return max(1.0, self._rate * BURST_S) if self._rate else math.inf

    def _refill(self) -> None:
        """Caller holds the lock."""
        now = self._clock()
        if self._rate is not None:
            self._level = min(self._capacity(), self._level + (now - self._updated) * self._rate)
        self._updated = now

    def _set_rate(self, per_minute: float) -> None:
        """Caller holds the lock (or is the constructor). A newly paced bucket starts full."""
        first = self._rate is None
        self._rate = per_minute * PACE_FRACTION / 60
        self._level = self._capacity() if first else min(self._level, self._capacity())

    def learn_limit(self, per_minute: float) -> None:
        """Pace to the announced limit, unless the configured one is lower."""
        if per_minute <= 0:
            return
        limit = per_minute if self._configured is None else min(per_minute, self._configured)
        with self._lock:
            self._refill()
            if self._rate is None or abs(limit * PACE_FRACTION / 60 - self._rate) > 1e-9:
                self._set_rate(limit)

    def drain_to(self, remaining: float) -> None:
        """The server says only `remaining` units are left: never count on more."""
        with self._lock:
            self._refill()
            self._level = min(self._level, remaining)

    def adjust(self, units: float) -> None:
        """Give back (positive) or take (negative) units, e.g. an estimate corrected by the real usage."""
        with self._lock:
            self._refill()
            self._level = min(self._capacity(), self._level + units)

    def reserve(self, units: float) -> float:
        """Take `units`; seconds to wait before spending them (0 when unpaced)."""
        with self._lock:
            if self._rate is None:
                return 0.0
            self._refill()
            self._level -= units
            return max(0.0, -self._level / self._rate)


class AimdWindow:
    """How many calls may be in flight (`limit`, within [1, maximum]): halved on a 429, grown on success.

    Growth is one call per success until the first 429 (doubling per round trip, so an unlimited
    server is soon at `maximum`), then one call per window of successes, as TCP does: growing by
    one per success would double the window again within one round trip of the halving, and a
    client that cannot pace by rate (no limit known) would keep meeting the quota in bursts. Only
    a 429 for a call sent after the last decrease halves it again: the calls sent together meet
    the same empty quota and are one signal, not many.
    """

    def __init__(self, maximum: int, start: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum = maximum
        self._window = float(max(1, min(maximum, start)))
        self._slow_start = True
        self.in_flight = 0
        self._clock = clock
        self._decreased_at = -math.inf
        self._changed = threading.Condition()

    @property
    def limit(self) -> int:
        return int(self._window)

    def acquire(self, deadline: float) -> float:
        """Wait for a free slot until `deadline` (monotonic); returns when the call may be sent."""
        with self._changed:
            while self.in_flight >= self.limit:
                left = deadline - self._clock()
                if left <= 0:
                    raise WaitBoundReached("no call slot came free")
                self._changed.wait(left if math.isfinite(left) else None)
            self.in_flight += 1
            return self._clock()

    def release(self, sent_at: float, outcome: str) -> None:
        """outcome: "answered" (grow), "rate_limited" (halve) or anything else (no change)."""
        with self._changed:
            self.in_flight -= 1
            if outcome == "answered":
                self._window = min(self.maximum, self._window + (1 if self._slow_start else 1 / self._window))
            elif outcome == "rate_limited" and sent_at > self._decreased_at:
                self._window = max(1.0, float(self.limit // 2))
                self._slow_start = False
                self._decreased_at = self._clock()
            self._changed.notify_all()


class WaitBoundReached(Exception):
    """A wait for the rate limit would end past the run's deadline; the call is not made."""


@dataclass
class PacedCall:
    """One call let through by `RatePacer.start`; hand it back to `RatePacer.finish`."""

    sent_at: float
    estimated_tokens: float


class RatePacer:
    """Everything a judge's worker threads share about the provider's limits.

    requests_per_minute / tokens_per_minute: what the key allows, when known (None: learn it from
    the response headers). max_in_flight: the most calls at once; with a configured request rate
    the window starts there (the bucket keeps the start smooth), else at INITIAL_IN_FLIGHT.
    """

    def __init__(
        self,
        *,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        max_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.requests = TokenBucket(requests_per_minute, clock)
        self.tokens = TokenBucket(tokens_per_minute, clock)
        start = max_in_flight if requests_per_minute is not None else INITIAL_IN_FLIGHT
        self.window = AimdWindow(max_in_flight, start, clock)
        self._lock = threading.Lock()
        self._paused_until = -math.inf
        self._tokens_seen = 0
        self._calls_seen = 0

    def start(self, prompt_chars: int, deadline: float) -> PacedCall:
        """Block until a call may go out: a free slot, both quotas paced, no pause. Raises WaitBoundReached."""
        sent_at = self.window.acquire(deadline)
        estimate = self._estimate_tokens(prompt_chars)
        try:
            self.wait(max(self.requests.reserve(1), self.tokens.reserve(estimate)), deadline)
            while (paused := self._paused_until - self._clock()) > 0:
                self.wait(paused, deadline)
        except WaitBoundReached:
            # Not sent: hand the reservations back, or the next run would start in their debt.
            self.requests.adjust(1)
            self.tokens.adjust(estimate)
            self.window.release(sent_at, "gave_up")
            raise
        return PacedCall(self._clock(), estimate)

    def finish(
        self, call: PacedCall, outcome: str, headers: Mapping[str, str] | None, used_tokens: int | None = None
    ) -> None:
        """What came back: outcome "answered", "rate_limited" or "failed", the headers and the tokens used."""
        if headers is not None:
            self._observe(headers, call, rate_limited=outcome == "rate_limited")
        if used_tokens is not None:
            self.tokens.adjust(call.estimated_tokens - used_tokens)
            with self._lock:
                self._tokens_seen += used_tokens
                self._calls_seen += 1
        self.window.release(call.sent_at, outcome)

    def wait(self, seconds: float, deadline: float) -> None:
        """Sleep `seconds`, unless that ends past `deadline`: then raise at once instead."""
        if seconds <= 0:
            return
        if self._clock() + seconds > deadline:
            raise WaitBoundReached(f"a wait of {seconds:.1f} s would pass it")
        self._sleep(seconds)

    def _estimate_tokens(self, prompt_chars: int) -> float:
        """A call's tokens before it is made: the mean so far, else ~4 characters per prompt token."""
        with self._lock:
            return self._tokens_seen / self._calls_seen if self._calls_seen else prompt_chars / 4

    def _observe(self, headers: Mapping[str, str], call: PacedCall, rate_limited: bool) -> None:
        told = False
        for bucket, kind, needed in ((self.requests, "requests", 1.0), (self.tokens, "tokens", call.estimated_tokens)):
            quota = QuotaHeaders.read(headers, kind)
            told = told or quota.remaining is not None
            if quota.limit_per_minute is not None:
                bucket.learn_limit(quota.limit_per_minute)
            if quota.remaining is None:
                continue
            bucket.drain_to(quota.remaining)
            if quota.remaining < needed and not bucket.paced and quota.reset_s:
                self._pause_for(quota.reset_s)
        if rate_limited and not told:
            self.requests.drain_to(0)  # a bare 429: whatever the bucket believed, the quota is spent

    def _pause_for(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
