"""The stub server's Files and Batch APIs, driven by the real `openai` client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from avdag_tests.support.openai_stub_server import CHAT_COMPLETIONS_PATH, OpenAIStubServer, StubReply


def _line(custom_id: str, url: str = CHAT_COMPLETIONS_PATH) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": "judge", "messages": [{"role": "user", "content": custom_id}]},
    }


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _reply(request: dict[str, Any]) -> str | StubReply:
    prompt = request["messages"][0]["content"]
    return StubReply(status=500) if prompt == "boom" else f"answer to {prompt}"


@pytest.fixture
def server() -> Iterator[OpenAIStubServer]:
    with OpenAIStubServer(_reply) as stub:
        yield stub


@pytest.fixture
def client(server: OpenAIStubServer) -> openai.OpenAI:
    return openai.OpenAI(api_key="test", base_url=server.base_url, max_retries=0)


def _create_batch(client: openai.OpenAI, lines: list[dict[str, Any]]) -> Any:
    upload = client.files.create(file=("judge.jsonl", _jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint=CHAT_COMPLETIONS_PATH, completion_window="24h")


def _file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    return [] if file_id is None else [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_upload_round_trips_bytes(client: openai.OpenAI, server: OpenAIStubServer) -> None:
    data = b'{"a": 1}\r\n\x00\xff binary tail'
    upload = client.files.create(file=("judge.jsonl", data), purpose="batch")
    assert (upload.filename, upload.purpose, upload.bytes, upload.status) == (
        "judge.jsonl",
        "batch",
        len(data),
        "processed",
    )
    assert client.files.retrieve(upload.id).id == upload.id
    assert client.files.content(upload.id).content == data == server.files[upload.id]


def test_batch_completes_with_output_in_input_order(client: openai.OpenAI, server: OpenAIStubServer) -> None:
    batch = _create_batch(client, [_line("c"), _line("a"), _line("b")])
    assert batch.status == "in_progress" and batch.output_file_id is None

    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.completed_at is not None and done.error_file_id is None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 3, 0)
    output = _file_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == ["c", "a", "b"]
    assert output[0]["response"]["status_code"] == 200 and output[0]["error"] is None
    body = output[0]["response"]["body"]
    assert body["choices"][0]["message"]["content"] == "answer to c" and body["usage"]["total_tokens"] > 0
    assert server.batch_lines_processed == ["c", "a", "b"]
    assert server.requests == [], "batch lines are not chat requests"
    assert server.batch_api_calls == 4  # upload, create, retrieve, output content
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"


def test_non_2xx_reply_goes_to_the_error_file(client: openai.OpenAI) -> None:
    done = client.batches.retrieve(_create_batch(client, [_line("ok"), _line("boom")]).id)
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    [error] = _file_lines(client, done.error_file_id)
    assert error["custom_id"] == "boom" and error["response"]["status_code"] == 500
    assert "error" in error["response"]["body"] and error["error"] is None


@pytest.mark.parametrize(
    ("lines", "bad_line", "param"),
    [
        ([_line("a"), _line("b"), _line("a")], 3, "custom_id"),
        ([_line("a"), _line("b", url="/v1/embeddings")], 2, "url"),
    ],
)
def test_invalid_input_line_fails_the_batch(
    client: openai.OpenAI, lines: list[dict[str, Any]], bad_line: int, param: str
) -> None:
    batch = _create_batch(client, lines)
    assert batch.status == "failed" and batch.errors is not None
    [error] = batch.errors.data or []
    assert (error.code, error.line, error.param) == ("invalid_request", bad_line, param)


def test_expired_batch_keeps_partial_results(client: openai.OpenAI, server: OpenAIStubServer) -> None:
    server.hold_batches = True
    batch = _create_batch(client, [_line("a"), _line("b"), _line("c")])
    assert client.batches.retrieve(batch.id).status == "in_progress"

    server.finish_batch(batch.id, "expired", processed=1)
    done = client.batches.retrieve(batch.id)
    assert done.status == "expired" and done.expired_at is not None
    assert [line["custom_id"] for line in _file_lines(client, done.output_file_id)] == ["a"]
    errors = _file_lines(client, done.error_file_id)
    assert [(line["custom_id"], line["error"]["code"], line["response"]) for line in errors] == [
        ("b", "batch_expired", None),
        ("c", "batch_expired", None),
    ]
    assert server.batch_lines_processed == ["a"]


def test_cancel(client: openai.OpenAI, server: OpenAIStubServer) -> None:
    server.complete_after_polls = 100
    batch = _create_batch(client, [_line("a"), _line("b")])
    assert client.batches.cancel(batch.id).status == "cancelling"
    done = client.batches.retrieve(batch.id)
    assert done.status == "cancelled" and done.output_file_id is None
    assert {line["error"]["code"] for line in _file_lines(client, done.error_file_id)} == {"batch_cancelled"}
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_list_paginates_newest_first(client: openai.OpenAI) -> None:
    created = [_create_batch(client, [_line(str(n))]).id for n in range(3)]
    first_page = client.batches.list(limit=2)
    assert [batch.id for batch in first_page.data] == created[::-1][:2] and first_page.has_more
    assert [batch.id for batch in client.batches.list(limit=2)] == created[::-1]  # auto-pagination


def test_unknown_ids_are_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-missing")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-missing")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id="file-missing", endpoint=CHAT_COMPLETIONS_PATH, completion_window="24h")
