from __future__ import annotations

import urllib.request

import pytest


@pytest.fixture()
def moto_server(_moto_endpoint):
    """The session's moto S3 server (tests/conftest.py), emptied for this test: yields its endpoint URL."""
    reset_moto(_moto_endpoint)
    yield _moto_endpoint


def reset_moto(endpoint: str) -> None:
    """moto keeps its buckets per process, not per server: start each test from an empty S3."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10).close()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
}


@pytest.fixture()
def s3_env(monkeypatch):
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return dict(S3_ENV)
