"""Which request heads the fast lane serves itself; every other one goes to aiohttp."""

from __future__ import annotations

import pytest

from mlserve.config import ServerConfig
from mlserve.monitor.metrics import Metrics
from mlserve.server.http.fastlane import _REMEMBERED_HEADS, LaneFront, parse_head
from mlserve.server.origin import BrowserGate

INFER = "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"


def head(text: str) -> bytes:
    return (text + "\r\n").encode("latin-1")


def test_an_infer_head_is_served_with_its_route_and_length():
    served = parse_head(head("POST /v2/models/mlp/versions/3/infer?x=1 HTTP/1.1\r\nContent-Length: 17\r\n"
                             "Authorization: Bearer k\r\n"))
    assert served is not None
    assert (served.path, served.match_info, served.length, served.keep_alive) == (
        "/v2/models/mlp/versions/3/infer", {"model": "mlp", "version": "3"}, 17, True)
    assert served.headers["authorization"] == "Bearer k"


def test_connection_close_is_kept():
    served = parse_head(head(INFER + "Connection: close\r\n"))
    assert served is not None and served.keep_alive is False


@pytest.mark.parametrize("text", [
    "GET /v2/models/mlp/infer HTTP/1.1\r\n",
    "POST /v2/models/mlp/ready HTTP/1.1\r\nContent-Length: 2\r\n",
    "POST /v2/models/mlp/infer HTTP/1.0\r\nContent-Length: 2\r\n",
    "POST /v2/models/mlp/infer HTTP/1.1\r\n",  # no Content-Length
    "POST /v2/models/mlp/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
    INFER + "Expect: 100-continue\r\n",
    INFER + "Upgrade: websocket\r\nConnection: upgrade\r\n",
    INFER + "Connection: keep-alive, te\r\n",
    INFER + "Content-Length: 2\r\n",  # twice
    "POST /v2/models/mlp/infer HTTP/1.1\r\nContent-Length: +2\r\n",
    "POST /v2/models/m%6Cp/infer HTTP/1.1\r\nContent-Length: 2\r\n",
    "POST /v2/models/../infer HTTP/1.1\r\nContent-Length: 2\r\n",
    "POST /v2/models/mlp/versions/./infer HTTP/1.1\r\nContent-Length: 2\r\n",
    "POST /v2/models/mlp/infer HTTP/1.1\r\nBad Header\r\n",
    "POST /v2/models/ml\u00e9p/infer HTTP/1.1\r\nContent-Length: 2\r\n",
], ids=["GET", "other route", "HTTP/1.0", "no length", "chunked", "expect", "upgrade", "odd Connection",
        "two lengths", "signed length", "percent-encoded", "dot-dot", "dot", "malformed", "not ASCII"])
def test_everything_else_is_handed_over(text):
    assert parse_head(head(text)) is None


LOCAL = "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"


def _front() -> LaneFront:
    config = ServerConfig()
    return LaneFront(None, BrowserGate.from_config(config), None, config, 8190, Metrics())  # type: ignore[arg-type]


def test_a_served_head_is_remembered_by_its_bytes_and_the_table_stays_bounded():
    front = _front()
    first = front.served_head(head(LOCAL))
    assert first is not None and first.length == 2
    assert front.served_head(bytes(bytearray(head(LOCAL)))) is first
    for n in range(_REMEMBERED_HEADS + 5):
        assert front.served_head(head(f"POST /v2/models/m{n}/infer HTTP/1.1\r\nContent-Length: 2\r\n")) is not None
    assert len(front._heads) <= _REMEMBERED_HEADS


@pytest.mark.parametrize("text", [LOCAL + "Origin: http://127.0.0.1\r\n", LOCAL.replace("127.0.0.1", "evil.example")])
def test_heads_for_aiohttp_are_handed_over_every_time(text):
    front = _front()
    for _ in range(2):
        assert front.served_head(head(text)) is None
