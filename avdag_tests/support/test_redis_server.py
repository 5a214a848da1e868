"""The throwaway Redis of the Celery tests: found on PATH, or a failure saying how to get it."""

import pytest

from avdag_tests.support import redis_server
from avdag_tests.support.redis_server import RedisServer, RedisUnavailable, redis_server_binary


def test_without_the_binary_it_fails_and_says_make_test_installs_it(monkeypatch):
    monkeypatch.setattr(redis_server.shutil, "which", lambda name: None)
    with pytest.raises(RedisUnavailable, match="`make test` installs Debian's redis-server package"):
        redis_server_binary()


def test_the_server_answers_then_is_stopped_and_its_folder_deleted_on_exit():
    with RedisServer() as server:
        client = server.client()
        client.set("key", "value")
        assert client.get("key") == b"value"
        folder, url = server.folder, server.url
    assert not folder.exists()
    with pytest.raises(redis_server.redis.ConnectionError):
        redis_server.redis.Redis.from_url(url, socket_connect_timeout=2).ping()
