from __future__ import annotations

import pytest

from mlserve.examples import write_examples
from tests.models import write_test_repository
from tests.server_process import free_port, serving


@pytest.fixture(scope="session")
def examples(tmp_path_factory):
    """`mlserve examples` written once a session (the LLMs and the MiniLM export take a while);
    repositories copy the models they hold from here (tests.models.copy_models)."""
    root = tmp_path_factory.mktemp("examples")
    write_examples(root)
    return root


@pytest.fixture(scope="session")
def test_repo(examples, tmp_path_factory):
    return write_test_repository(tmp_path_factory.mktemp("repo"), examples)


@pytest.fixture(scope="session")
def server(test_repo, tmp_path_factory):
    """One real mlserve process over the test repository, shared by the end-to-end tests."""
    with serving(test_repo, log_path=tmp_path_factory.mktemp("logs") / "mlserve.log") as proc:
        yield proc


@pytest.fixture(scope="session")
def _moto_endpoint():
    """One real moto S3 server on a free 127.0.0.1 port for the session (stopping one takes half a second)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
