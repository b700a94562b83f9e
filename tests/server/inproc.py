"""In-process handler tests: the real app from create_app, served by aiohttp's test server on a
loopback port, talked to with aiohttp's test client. For the fast unit level; end-to-end tests
start a real `mlserve` process (tests/server_process.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import AsyncIterator

from aiohttp.test_utils import TestClient, TestServer

from mlserve.config import Config, RegistryConfig, replace
from mlserve.server.app import create_app


def config_for(root: Path, **sections) -> Config:
    """Defaults with the repository at `root`; `sections` replace whole config sections."""
    return replace(Config(), registry=RegistryConfig(models=str(root)), **sections)


@contextlib.asynccontextmanager
async def app_client(config: Config) -> AsyncIterator[TestClient]:
    """The app started (startup hooks ran: the repository is loaded), then stopped in order."""
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
