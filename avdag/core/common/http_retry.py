"""When and how long to retry a call to an OpenAI-compatible server, shared by the remote captioner and the judge.

Both keep their own retry loop (the client's max_retries=0), so every failure can say how many
attempts it took and a run-wide budget can count every HTTP call. These helpers decide the rest:
which errors are worth another try, how long to wait (the server's Retry-After, else exponential
backoff with jitter) and how the final failure reads. A rate limit (429) is told apart from the
other retryable errors: a caller that paces itself waits it out instead of counting it as a failure.
"""

from __future__ import annotations

import email.utils
import random
from datetime import UTC, datetime

import openai

# What the OpenAI client itself retries: timeouts, lock conflicts, rate limits, server errors.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
BACKOFF_BASE_S = 1.0
MAX_RETRY_WAIT_S = 30.0
_SERVER_MESSAGE_CHARS = 300


def attempts_text(attempts: int) -> str:
    return f"{attempts} attempt" + ("" if attempts == 1 else "s")


def _server_message(error: openai.APIStatusError) -> str:
    """The server's own words: the OpenAI error body's message, else the raw body, shortened."""
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return str(body)[:_SERVER_MESSAGE_CHARS] if body else error.message


def retry_after_s(headers) -> float | None:
    """The wait a server asks for: `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
    if (milliseconds := headers.get("retry-after-ms")) is not None:
        try:
            return float(milliseconds) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are UTC
        when = when.replace(tzinfo=UTC)
    return (when - datetime.now(UTC)).total_seconds()


def backoff_s(attempt: int) -> float:
    """Exponential backoff with jitter, so many workers retrying at once do not retry in step."""
    return min(MAX_RETRY_WAIT_S, BACKOFF_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def rate_limit_wait_s(error: openai.APIStatusError, rate_limited: int) -> float:
    """How long to wait after the `rate_limited`-th 429 of one call: all the server asks, else backoff.

    Not capped like other retries: retrying before the quota has refilled only buys another 429.
    """
    asked = retry_after_s(error.response.headers)
    return max(0.0, backoff_s(rate_limited) if asked is None else asked)


def wait_before_retry(error: Exception, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt`: the server's ask, else backoff, capped."""
    asked = retry_after_s(error.response.headers) if isinstance(error, openai.APIStatusError) else None
    wait = backoff_s(attempt) if asked is None else asked
    return min(MAX_RETRY_WAIT_S, max(0.0, wait))


def is_retryable(error: Exception) -> bool:
    """Rate limits, timeouts, conflicts, 5xx and lost connections may succeed on another try."""
    if isinstance(error, openai.APIStatusError):
        if _error_code(error) == "insufficient_quota":
            return False
        return error.status_code in RETRYABLE_STATUSES or error.status_code >= 500
    return isinstance(error, openai.APIConnectionError)  # includes APITimeoutError


def is_rate_limit(error: Exception) -> bool:
    """A 429 that passes once the quota refills; OpenAI's "insufficient_quota" 429 (no credit) never does."""
    return isinstance(error, openai.APIStatusError) and error.status_code == 429 and is_retryable(error)


def _error_code(error: openai.APIStatusError) -> str | None:
    """The OpenAI error body's `code` (the client hands over the inner "error" object)."""
    body = error.body
    return body.get("code") if isinstance(body, dict) else None


def failure_text(error: Exception, attempts: int) -> str:
    """'HTTP 500 after 3 attempts: <server message>' or '<ErrorType> after N attempts: <text>'."""
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code} after {attempts_text(attempts)}: {_server_message(error)}"
    return f"{type(error).__name__} after {attempts_text(attempts)}: {error}"
