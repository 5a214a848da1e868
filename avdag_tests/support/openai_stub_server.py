"""A real OpenAI-compatible HTTP server on 127.0.0.1, for tests that exercise the real client.

Not a mock: the `openai` package talks HTTP to it, so request building, response parsing,
retries and timeouts all run for real. Each test decides the replies with a function:

    def reply_fn(request: dict) -> str | StubReply: ...

    with OpenAIStubServer(lambda request: "Close match. <answer>4</answer>") as server:
        client = openai.OpenAI(api_key="test", base_url=server.base_url, max_retries=0)
        ...
        server.requests          # every JSON body received, retries included, in order
        server.request_times     # time.monotonic() at which each of them arrived
        server.max_concurrent_requests  # most chat requests it was answering at one time

Return a str for a normal chat.completion with that content, or a `StubReply` to inject a
fault: an HTTP error status, a raw (possibly malformed) body, extra headers, or a delay; or a
reasoning model's reply, as vLLM's `--reasoning-parser` splits it (`reasoning` in the message's
`reasoning_content` or `reasoning` field, `content` possibly None).
If `reply_fn` raises, the server answers 500 with the exception text, so a bug in a test's
reply function shows up as a failed call instead of a hang.

It also speaks the Files and Batch APIs, so `client.files.*` / `client.batches.*` run for real:
POST /v1/files (multipart), GET /v1/files/{id}[/content], POST /v1/batches (input validated as
OpenAI does: a bad line makes the batch "failed"), GET /v1/batches[/{id}], POST
/v1/batches/{id}/cancel. Batch lines are answered by the same `reply_fn` (a non-2xx StubReply
lands in the error file) but are not added to `requests`. A batch completes on its
`complete_after_polls`-th retrieve (default 1) unless `hold_batches` is set; `finish_batch(id,
"expired", processed=1)` ends one early with partial results. Recorded: `files` (id -> bytes),
`batches` (id -> Batch JSON), `batch_lines_processed` (custom_ids, in order), `batch_api_calls`.

Rate limits, as OpenAI enforces them: `OpenAIStubServer(reply_fn, rate_limit_rpm=600)` (and/or
`rate_limit_tpm=...`) keeps a token bucket per quota, refilled continuously and holding at most
`rate_limit_burst_s` seconds of it (OpenAI enforces a minute's quota in such sub-minute slices). A
chat request that finds a bucket empty is answered 429 "rate_limit_exceeded" with `retry-after`,
`retry-after-ms` and the `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers, before
reply_fn sees it; answered requests carry the same x-ratelimit headers (`rate_limit_headers=False`
leaves them out, for a server that only says Retry-After). A request costs 1 of the request
quota on arrival and its reply's usage.total_tokens of the token quota. `rate_limited_responses`
counts the 429s.

Multimodal limits, as vLLM's `--limit-mm-per-prompt` enforces them:
`OpenAIStubServer(reply_fn, limit_mm_per_prompt={"image": 2, "video": 1})` answers a chat request
with more image_url (video_url) parts than that 400 with vLLM's own message, before reply_fn sees it.
"""

from __future__ import annotations

import copy
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
BATCH_API_PREFIXES = ("/v1/files", "/v1/batches")
FILE_PURPOSES = {
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
}
UNPROCESSED_LINE_ERRORS = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}


@dataclass(frozen=True)
class StubReply:
    """What the server should answer to one request, for fault injection.

    status:  HTTP status; non-2xx statuses get an OpenAI-style error body unless `body` is set.
    content: the assistant message for a 2xx chat.completion (ignored when `body` is set).
    body:    raw response bytes/str sent as-is (e.g. truncated JSON).
    headers: extra response headers (e.g. {"retry-after-ms": "10"} to make client retries fast).
    delay_s: seconds to sleep before answering (to trigger client timeouts).
    reasoning: the reasoning parser's part of a 2xx reply, in the message field `reasoning_field`
             ("reasoning_content", or "reasoning" as newer vLLM names it); `content` None then
             leaves the message content null, as vLLM does when the model never closed its <think>.
    """

    status: int = 200
    content: str | None = None
    body: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    reasoning: str | None = None
    reasoning_field: str = "reasoning_content"


ReplyFn = Callable[[dict[str, Any]], "str | StubReply"]


def chat_completion_body(model: str, content: str, request_index: int) -> dict[str, Any]:
    """A minimal valid `chat.completion` object, with usage, as the OpenAI API returns it."""
    prompt_tokens, completion_tokens = 10, max(1, len(content.split()))
    return {
        "id": f"chatcmpl-stub-{request_index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error_body(status: int, message: str) -> dict[str, Any]:
    """An OpenAI-style error object, so the client raises its usual APIStatusError."""
    return {
        "error": {
            "message": message,
            "type": "server_error" if status >= 500 else "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def openai_duration(seconds: float) -> str:
    """A wait as OpenAI's x-ratelimit-reset-* headers write it: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class _Quota:
    """One server-side quota ("requests" or "tokens"): `per_minute` refilled continuously, `burst_s` of it saved."""

    def __init__(self, kind: str, per_minute: float, burst_s: float) -> None:
        self.kind = kind
        self.per_minute = per_minute
        self.rate = per_minute / 60
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self._updated = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    def wait_s(self) -> float:
        """Until one unit is free (a token quota in debt waits for the debt too)."""
        return max(0.0, (1 - self.level) / self.rate)

    def headers(self) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{self.kind}": str(int(self.per_minute)),
            f"x-ratelimit-remaining-{self.kind}": str(max(0, int(self.level))),
            f"x-ratelimit-reset-{self.kind}": openai_duration(max(0.0, self.capacity - self.level) / self.rate),
        }


class ApiError(Exception):
    """Raised inside a Files/Batch route to answer `status` with an OpenAI-style error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """form field name -> (filename, raw bytes) of a multipart/form-data body (`cgi` is gone in 3.13)."""
    boundary = BytesHeaderParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode()).get_param("boundary")
    if not isinstance(boundary, str):
        raise ApiError(400, "expected a multipart/form-data body with a boundary")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + boundary.encode())[1:-1]:  # [0] is the preamble, [-1] the closing "--"
        head, _, value = part[2:-2].partition(b"\r\n\r\n")  # each part is wrapped in CRLFs
        headers = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (headers.get_filename(), value)
    return fields


def parse_batch_input(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(request lines, BatchError dicts) of a batch input file, validated as OpenAI does on creation."""
    requests: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    for number, text in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            requests.append(_parse_request_line(text, endpoint, seen_ids))
        except _LineError as exc:
            errors.append({"code": "invalid_request", "message": str(exc), "line": number, "param": exc.param})
    if not requests and not errors:
        errors.append({"code": "empty_file", "message": "The batch input file is empty.", "line": None, "param": None})
    return requests, errors


class _LineError(Exception):
    """One invalid batch input line; `param` names the offending field, as in a BatchError."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param = param


def _parse_request_line(text: str, endpoint: str, seen_ids: set[str]) -> dict[str, Any]:
    try:
        line = json.loads(text)
    except json.JSONDecodeError:
        raise _LineError(None, "This line is not valid JSON.") from None
    if not isinstance(line, dict):
        raise _LineError(None, "This line is not a JSON object.")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str):
        raise _LineError("custom_id", "custom_id must be a string.")
    if custom_id in seen_ids:
        raise _LineError("custom_id", f"The custom_id {custom_id!r} is not unique in this file.")
    seen_ids.add(custom_id)
    if line.get("method") != "POST":
        raise _LineError("method", f"method must be POST, got {line.get('method')!r}.")
    if line.get("url") != endpoint:
        raise _LineError("url", f"url {line.get('url')!r} does not match the batch endpoint {endpoint!r}.")
    if not isinstance(line.get("body"), dict):
        raise _LineError("body", "body must be a JSON object.")
    return line


class OpenAIStubServer:
    """ThreadingHTTPServer on 127.0.0.1 (free port) serving POST /v1/chat/completions (and Files/Batches).

    Use as a context manager, or call start()/stop(). `requests` (JSON bodies) and
    `request_headers` (names lower-cased) and `request_times` (time.monotonic() on arrival) are
    appended under a lock, one entry per HTTP request, so client retries and their spacing are
    visible. `max_concurrent_requests` is the most chat requests being answered at once (from receipt
    until the reply is sent, delay included), so a test can check a client's parallelism without
    relying on timing.
    """

    def __init__(
        self,
        reply_fn: ReplyFn | None = None,
        *,
        rate_limit_rpm: float | None = None,
        rate_limit_tpm: float | None = None,
        rate_limit_burst_s: float = 1.0,
        rate_limit_headers: bool = True,
        limit_mm_per_prompt: dict[str, int] | None = None,
    ) -> None:
        self.reply_fn: ReplyFn = reply_fn or (lambda request: "<answer>5</answer>")
        self._quotas = [
            _Quota(kind, per_minute, rate_limit_burst_s)
            for kind, per_minute in (("requests", rate_limit_rpm), ("tokens", rate_limit_tpm))
            if per_minute is not None
        ]
        self.rate_limit_headers = rate_limit_headers
        self.limit_mm_per_prompt = dict(limit_mm_per_prompt or {})
        self.rate_limited_responses = 0  # chat requests answered 429 because a quota was empty
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.request_times: list[float] = []
        self.max_concurrent_requests = 0
        self._concurrent_requests = 0
        # Files and Batch APIs
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}  # id -> Batch JSON, as the next retrieve shows it
        self.batch_lines_processed: list[str] = []  # custom_ids run through reply_fn, in order
        self.batch_api_calls = 0  # HTTP calls under /v1/files and /v1/batches
        self.complete_after_polls = 1  # an in-progress batch completes on its N-th retrieve ...
        self.hold_batches = False  # ... unless held (then only finish_batch/cancel end it)
        self._file_objects: dict[str, dict[str, Any]] = {}
        self._batch_requests: dict[str, list[dict[str, Any]]] = {}  # batch id -> its validated input lines
        self._batch_polls: Counter[str] = Counter()
        self._finishing: set[str] = set()  # batches whose lines are being run right now
        self._id_counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> OpenAIStubServer:
        self._httpd = _BackloggedServer(("127.0.0.1", 0), _handler_class(self))
        self._httpd.daemon_threads = True
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> OpenAIStubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port; kept after stop() so tests can aim a client at a closed port."""
        if self._port is None:
            raise RuntimeError("server was never started")
        return self._port

    @property
    def base_url(self) -> str:
        """What to pass as the client's base_url: "http://127.0.0.1:PORT/v1"."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- request handling (called from handler threads) ----------------------------------------

    def record(self, body: dict[str, Any], headers: dict[str, str]) -> int:
        """Store one request; returns its 0-based index."""
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(headers)
            self.request_times.append(time.monotonic())
            return len(self.requests) - 1

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Counts one chat request as in flight while the block runs."""
        with self._lock:
            self._concurrent_requests += 1
            self.max_concurrent_requests = max(self.max_concurrent_requests, self._concurrent_requests)
        try:
            yield
        finally:
            with self._lock:
                self._concurrent_requests -= 1

    def respond(self, body: dict[str, Any], request_index: int) -> tuple[int, bytes, dict[str, str], float]:
        """(status, response bytes, extra headers, delay) for one chat request; a 429 if a quota is empty."""
        refusal = self._take_quota(body) or self._over_mm_limit(body)
        if refusal is not None:
            return refusal
        reply = self._reply_for(body)
        payload = self._reply_bytes(reply, body, request_index)
        return reply.status, payload, {**self._charge_tokens(reply, payload), **reply.headers}, reply.delay_s

    def _take_quota(self, body: dict[str, Any]) -> tuple[int, bytes, dict[str, str], float] | None:
        """Take one request from the request quota; when a quota is empty, the 429 OpenAI would answer."""
        with self._lock:
            for quota in self._quotas:
                quota.refill()
            empty = [quota for quota in self._quotas if quota.level < 1]
            if not empty:
                for quota in self._quotas:
                    if quota.kind == "requests":
                        quota.level -= 1
                return None
            self.rate_limited_responses += 1
            wait_s = max(quota.wait_s() for quota in empty)
            headers = self._quota_headers()
        limit = empty[0]
        message = (
            f"Rate limit reached for {body.get('model')} on {limit.kind} per min "
            f"({'RPM' if limit.kind == 'requests' else 'TPM'}): Limit {int(limit.per_minute)}. "
            f"Please try again in {openai_duration(wait_s)}."
        )
        error = {"error": {"message": message, "type": limit.kind, "param": None, "code": "rate_limit_exceeded"}}
        headers |= {"retry-after": str(math.ceil(wait_s)), "retry-after-ms": str(math.ceil(wait_s * 1000))}
        return 429, json.dumps(error).encode(), headers, 0.0

    def _over_mm_limit(self, body: dict[str, Any]) -> tuple[int, bytes, dict[str, str], float] | None:
        """vLLM's 400 for more items of a modality than `--limit-mm-per-prompt` allows."""
        parts = [
            part
            for message in body.get("messages") or []
            if isinstance(message.get("content"), list)
            for part in message["content"]
        ]
        for modality, limit in self.limit_mm_per_prompt.items():
            count = sum(1 for part in parts if part.get("type") == f"{modality}_url")
            if count > limit:
                message = f"At most {limit} {modality}(s) may be provided in one prompt."
                if limit > 0:
                    message += " Set `--limit-mm-per-prompt` to increase this limit."
                return 400, json.dumps(error_body(400, message)).encode(), {}, 0.0
        return None

    def _charge_tokens(self, reply: StubReply, payload: bytes) -> dict[str, str]:
        """Take an answered reply's usage from the token quota; the x-ratelimit headers it goes out with."""
        if not self._quotas:
            return {}
        used = 0
        if 200 <= reply.status < 300 and reply.body is None:
            used = json.loads(payload)["usage"]["total_tokens"]
        with self._lock:
            for quota in self._quotas:
                quota.refill()
                if quota.kind == "tokens":
                    quota.level -= used
            return self._quota_headers()

    def _quota_headers(self) -> dict[str, str]:
        """Caller holds the lock."""
        if not self.rate_limit_headers:
            return {}
        return {name: value for quota in self._quotas for name, value in quota.headers().items()}

    def _reply_for(self, body: dict[str, Any]) -> StubReply:
        """reply_fn's answer as a StubReply; shared by chat requests and batch lines."""
        try:
            reply = self.reply_fn(body)
        except Exception as exc:  # noqa: BLE001 - surface test bugs as HTTP 500s
            reply = StubReply(status=500, body=json.dumps(error_body(500, f"reply_fn raised {exc!r}")))
        return StubReply(content=reply) if isinstance(reply, str) else reply

    @staticmethod
    def _reply_bytes(reply: StubReply, body: dict[str, Any], request_index: int) -> bytes:
        if reply.body is not None:
            return reply.body.encode() if isinstance(reply.body, str) else reply.body
        if 200 <= reply.status < 300:
            payload = chat_completion_body(str(body.get("model", "stub")), reply.content or "", request_index)
            if reply.reasoning is not None:
                message = payload["choices"][0]["message"]
                message[reply.reasoning_field] = reply.reasoning
                if reply.content is None:
                    message["content"] = None
        else:
            payload = error_body(reply.status, reply.content or f"stub error {reply.status}")
        return json.dumps(payload).encode()

    # -- Files and Batch APIs ------------------------------------------------------------------

    def handle_batch_api(self, method: str, target: str, raw: bytes, content_type: str) -> tuple[int, Any]:
        """(status, JSON-able dict or raw bytes) for one HTTP call under /v1/files or /v1/batches."""
        url = urlsplit(target)
        with self._lock:
            self.batch_api_calls += 1
        try:
            match (method, *url.path.strip("/").split("/")):
                case ("POST", "v1", "files"):
                    return 200, self._upload_file(parse_multipart(raw, content_type))
                case ("GET", "v1", "files", file_id):
                    with self._lock:
                        return 200, copy.deepcopy(self._file_object(file_id))
                case ("GET", "v1", "files", file_id, "content"):
                    with self._lock:
                        self._file_object(file_id)
                        return 200, self.files[file_id]
                case ("POST", "v1", "batches"):
                    return 200, self._create_batch(_json_object(raw))
                case ("GET", "v1", "batches"):
                    return 200, self._list_batches(parse_qs(url.query))
                case ("GET", "v1", "batches", batch_id):
                    return 200, self._poll_batch(batch_id)
                case ("POST", "v1", "batches", batch_id, "cancel"):
                    return 200, self._cancel_batch(batch_id)
                case _:
                    raise ApiError(404, f"no route {target}")
        except ApiError as exc:
            return exc.status, error_body(exc.status, str(exc))

    def finish_batch(self, batch_id: str, status: str = "completed", processed: int | None = None) -> dict[str, Any]:
        """End an in-progress (or cancelling) batch now; returns its Batch JSON.

        "completed" runs every line through reply_fn; "expired"/"cancelled" run only the first
        `processed` lines (default 0) and put the rest in the error file as batch_expired /
        batch_cancelled, as OpenAI does when the window runs out or a batch is cancelled.
        """
        if status != "completed" and status not in UNPROCESSED_LINE_ERRORS:
            raise ValueError(f"status must be completed, expired or cancelled, not {status!r}")
        with self._lock:
            batch = self._batch(batch_id)
            if batch["status"] not in ("in_progress", "cancelling") or batch_id in self._finishing:
                raise ValueError(f"batch {batch_id} is {batch['status']}, not in progress")
            self._finishing.add(batch_id)
        return self._finish(batch_id, status, processed)

    def _next_number(self, kind: str) -> int:
        """1, 2, ... per kind of id. Caller holds the lock."""
        self._id_counters[kind] += 1
        return self._id_counters[kind]

    def _add_file(self, filename: str, data: bytes, purpose: str) -> dict[str, Any]:
        """Store a file and return its FileObject. Caller holds the lock."""
        file_id = f"file-stub-{self._next_number('file')}"
        self.files[file_id] = data
        self._file_objects[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        return self._file_objects[file_id]

    def _file_object(self, file_id: str) -> dict[str, Any]:
        """Caller holds the lock."""
        if file_id not in self._file_objects:
            raise ApiError(404, f"No such File object: {file_id}")
        return self._file_objects[file_id]

    def _batch(self, batch_id: str) -> dict[str, Any]:
        """Caller holds the lock."""
        if batch_id not in self.batches:
            raise ApiError(404, f"No batch found with id '{batch_id}'.")
        return self.batches[batch_id]

    def _upload_file(self, fields: dict[str, tuple[str | None, bytes]]) -> dict[str, Any]:
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if purpose not in FILE_PURPOSES:
            raise ApiError(400, f"Invalid value for 'purpose': {purpose!r}.")
        if "file" not in fields:
            raise ApiError(400, "Missing required parameter: 'file'.")
        filename, data = fields["file"]
        with self._lock:
            return copy.deepcopy(self._add_file(filename or "upload", data, purpose))

    def _create_batch(self, request: dict[str, Any]) -> dict[str, Any]:
        endpoint, input_file_id = request.get("endpoint"), request.get("input_file_id")
        if endpoint != CHAT_COMPLETIONS_PATH:
            raise ApiError(400, f"the stub only runs batches for {CHAT_COMPLETIONS_PATH}, not {endpoint!r}")
        if request.get("completion_window") != "24h":
            raise ApiError(400, "completion_window must be '24h'.")
        with self._lock:
            input_file = self._file_objects.get(input_file_id) if isinstance(input_file_id, str) else None
            if input_file is None or input_file["purpose"] != "batch":
                raise ApiError(400, f"Invalid 'input_file_id': {input_file_id!r} is not a file with purpose 'batch'.")
            data = self.files[input_file_id]
        requests, errors = parse_batch_input(data, endpoint)
        now = int(time.time())
        batch: dict[str, Any] = {
            "object": "batch",
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": "failed" if errors else "in_progress",
            "created_at": now,
            "expires_at": now + 24 * 3600,
            "in_progress_at": None if errors else now,
            "failed_at": now if errors else None,
            "finalizing_at": None,
            "completed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "output_file_id": None,
            "error_file_id": None,
            "errors": {"object": "list", "data": errors} if errors else None,
            "request_counts": {"total": 0 if errors else len(requests), "completed": 0, "failed": 0},
            "metadata": request.get("metadata"),
            "model": requests[0]["body"].get("model") if requests else None,
            "usage": None,
        }
        with self._lock:
            batch["id"] = f"batch_stub_{self._next_number('batch')}"
            self.batches[batch["id"]] = batch
            self._batch_requests[batch["id"]] = requests
            return copy.deepcopy(batch)

    def _list_batches(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """One newest-first page, cursor-paginated by `after` like the real list endpoint."""
        limit, after = int(query.get("limit", ["20"])[0]), query.get("after", [None])[0]
        with self._lock:
            newest_first = list(reversed(self.batches))
            if after is not None:
                newest_first = newest_first[newest_first.index(after) + 1 :] if after in newest_first else []
            page = [copy.deepcopy(self.batches[batch_id]) for batch_id in newest_first[:limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(newest_first) > limit,
        }

    def _poll_batch(self, batch_id: str) -> dict[str, Any]:
        """A retrieve: counts toward complete_after_polls, and turns "cancelling" into "cancelled"."""
        with self._lock:
            batch = self._batch(batch_id)
            self._batch_polls[batch_id] += 1
            ends_as = None
            if batch_id not in self._finishing:
                if batch["status"] == "cancelling":
                    ends_as = "cancelled"
                elif (
                    batch["status"] == "in_progress"
                    and not self.hold_batches
                    and self._batch_polls[batch_id] >= self.complete_after_polls
                ):
                    ends_as = "completed"
            if ends_as is None:
                return copy.deepcopy(batch)
            self._finishing.add(batch_id)
        return self._finish(batch_id, ends_as, processed=None if ends_as == "completed" else 0)

    def _cancel_batch(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            batch = self._batch(batch_id)
            if batch["status"] not in ("in_progress", "cancelling") or batch_id in self._finishing:
                raise ApiError(409, f"Cannot cancel a batch with status '{batch['status']}'.")
            batch["status"] = "cancelling"
            batch["cancelling_at"] = batch["cancelling_at"] or int(time.time())
            return copy.deepcopy(batch)

    def _finish(self, batch_id: str, status: str, processed: int | None) -> dict[str, Any]:
        """Run the lines (reply_fn outside the lock), then write output/error files and the final Batch."""
        with self._lock:
            requests = self._batch_requests[batch_id]
        run_count = len(requests) if status == "completed" else min(processed or 0, len(requests))
        replies = [self._reply_for(request["body"]) for request in requests[:run_count]]
        with self._lock:
            try:
                output_lines, error_lines = [], []
                for request, reply in zip(requests, replies):
                    index = self._next_number("batch_request")
                    raw = self._reply_bytes(reply, request["body"], index).decode("utf-8", errors="replace")
                    try:
                        response_body: Any = json.loads(raw)
                    except json.JSONDecodeError:
                        response_body = raw  # malformed on purpose: hand it over as the string it is
                    line = {
                        "id": f"batch_req_{index}",
                        "custom_id": request["custom_id"],
                        "response": {"status_code": reply.status, "request_id": f"req_{index}", "body": response_body},
                        "error": None,
                    }
                    (output_lines if 200 <= reply.status < 300 else error_lines).append(line)
                    self.batch_lines_processed.append(request["custom_id"])
                for request in requests[run_count:]:
                    code, message = UNPROCESSED_LINE_ERRORS[status]
                    error_lines.append(
                        {
                            "id": f"batch_req_{self._next_number('batch_request')}",
                            "custom_id": request["custom_id"],
                            "response": None,
                            "error": {"code": code, "message": message},
                        }
                    )
                batch = self.batches[batch_id]
                now = int(time.time())
                batch.update(
                    {
                        "status": status,
                        f"{status}_at": now,
                        "finalizing_at": now if status == "completed" else None,
                        "output_file_id": self._add_jsonl_file(f"{batch_id}_output.jsonl", output_lines),
                        "error_file_id": self._add_jsonl_file(f"{batch_id}_error.jsonl", error_lines),
                        "request_counts": {
                            "total": len(requests),
                            "completed": len(output_lines),
                            "failed": len(requests) - len(output_lines),
                        },
                        "usage": _batch_usage(output_lines),
                    }
                )
                return copy.deepcopy(batch)
            finally:
                self._finishing.discard(batch_id)

    def _add_jsonl_file(self, filename: str, lines: list[dict[str, Any]]) -> str | None:
        """A batch_output file of `lines`, or None when there are none (as OpenAI leaves it). Caller holds the lock."""
        if not lines:
            return None
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return self._add_file(filename, data, "batch_output")["id"]


def _batch_usage(output_lines: list[dict[str, Any]]) -> dict[str, Any]:
    """A Batch's `usage`: the chat usages of its output lines, summed."""
    usages = [
        line["response"]["body"].get("usage") or {}
        for line in output_lines
        if isinstance(line["response"]["body"], dict)
    ]
    input_tokens = sum(usage.get("prompt_tokens", 0) for usage in usages)
    output_tokens = sum(usage.get("completion_tokens", 0) for usage in usages)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except json.JSONDecodeError:
        raise ApiError(400, "request body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


class _BackloggedServer(ThreadingHTTPServer):
    """A listen backlog like a real server's: the default of 5 refuses a client's 64 simultaneous connects."""

    request_queue_size = 256


def _handler_class(server: OpenAIStubServer) -> type[BaseHTTPRequestHandler]:
    """A request handler bound to `server` (http.server wants a class, not an instance)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if urlsplit(self.path).path.startswith(BATCH_API_PREFIXES):
                self._answer_batch_api("POST", raw)
                return
            if self.path.rstrip("/") != CHAT_COMPLETIONS_PATH:
                self._send(404, json.dumps(error_body(404, f"no route {self.path}")).encode())
                return
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._send(400, json.dumps(error_body(400, "request body is not JSON")).encode())
                return
            index = server.record(body, {name.lower(): value for name, value in self.headers.items()})
            with server.answering():
                status, payload, headers, delay_s = server.respond(body, index)
                if delay_s:
                    time.sleep(delay_s)
                self._send(status, payload, headers)

        def do_GET(self) -> None:  # noqa: N802
            if urlsplit(self.path).path.startswith(BATCH_API_PREFIXES):
                self._answer_batch_api("GET", b"")
            elif self.path.rstrip("/") == MODELS_PATH:
                self._send(200, json.dumps({"object": "list", "data": []}).encode())
            else:
                self._send(404, json.dumps(error_body(404, f"no route {self.path}")).encode())

        def _answer_batch_api(self, method: str, raw: bytes) -> None:
            status, payload = server.handle_batch_api(method, self.path, raw, self.headers.get("Content-Type", ""))
            if isinstance(payload, bytes):  # file content
                self._send(status, payload, content_type="application/octet-stream")
            else:
                self._send(status, json.dumps(payload).encode())

        def _send(
            self,
            status: int,
            payload: bytes,
            headers: dict[str, str] | None = None,
            content_type: str = "application/json",
        ) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. its timeout fired during delay_s)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Keep test output quiet."""

    return Handler
