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
fault: an HTTP error status, a raw (possibly malformed) body, extra headers, or a delay.
If `reply_fn` raises, the server answers 500 with the exception text, so a bug in a test's
reply function shows up as a failed call instead of a hang.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"


@dataclass(frozen=True)
class StubReply:
    """What the server should answer to one request, for fault injection.

    status:  HTTP status; non-2xx statuses get an OpenAI-style error body unless `body` is set.
    content: the assistant message for a 2xx chat.completion (ignored when `body` is set).
    body:    raw response bytes/str sent as-is (e.g. truncated JSON).
    headers: extra response headers (e.g. {"retry-after-ms": "10"} to make client retries fast).
    delay_s: seconds to sleep before answering (to trigger client timeouts).
    """

    status: int = 200
    content: str | None = None
    body: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


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
    return {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
                      "param": None, "code": None}}


class OpenAIStubServer:
    """ThreadingHTTPServer on 127.0.0.1 (free port) serving POST /v1/chat/completions.

    Use as a context manager, or call start()/stop(). `requests` (JSON bodies) and
    `request_headers` (names lower-cased) and `request_times` (time.monotonic() on arrival) are
    appended under a lock, one entry per HTTP request, so client retries and their spacing are
    visible. `max_concurrent_requests` is the most chat requests being answered at once (from receipt until the reply is sent, delay included),
    so a test can check a client's parallelism without relying on timing.
    """

    def __init__(self, reply_fn: ReplyFn | None = None) -> None:
        self.reply_fn: ReplyFn = reply_fn or (lambda request: "<answer>5</answer>")
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.request_times: list[float] = []
        self.max_concurrent_requests = 0
        self._concurrent_requests = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> OpenAIStubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
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
        """(status, response bytes, extra headers, delay) for one chat request."""
        try:
            reply = self.reply_fn(body)
        except Exception as exc:  # noqa: BLE001 - surface test bugs as HTTP 500s
            reply = StubReply(status=500, body=json.dumps(error_body(500, f"reply_fn raised {exc!r}")))
        if isinstance(reply, str):
            reply = StubReply(content=reply)
        return reply.status, self._reply_bytes(reply, body, request_index), dict(reply.headers), reply.delay_s

    @staticmethod
    def _reply_bytes(reply: StubReply, body: dict[str, Any], request_index: int) -> bytes:
        if reply.body is not None:
            return reply.body.encode() if isinstance(reply.body, str) else reply.body
        if 200 <= reply.status < 300:
            payload = chat_completion_body(str(body.get("model", "stub")), reply.content or "", request_index)
        else:
            payload = error_body(reply.status, reply.content or f"stub error {reply.status}")
        return json.dumps(payload).encode()


def _handler_class(server: OpenAIStubServer) -> type[BaseHTTPRequestHandler]:
    """A request handler bound to `server` (http.server wants a class, not an instance)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
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
            if self.path.rstrip("/") == MODELS_PATH:
                self._send(200, json.dumps({"object": "list", "data": []}).encode())
            else:
                self._send(404, json.dumps(error_body(404, f"no route {self.path}")).encode())

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
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
