from tests.state.conftest import redis_server  # noqa: F401  (one real redis-server for these tests too)
