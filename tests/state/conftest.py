from __future__ import annotations

import pytest

from tests.state.redis_server import NO_REDIS, RedisServer, has_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the session; tests keep apart by key prefix."""
    if not has_redis():
        pytest.skip(NO_REDIS)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
