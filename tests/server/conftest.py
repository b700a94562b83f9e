from __future__ import annotations

import pytest

from tests.server.llm_repo import write_llm_repository
from tests.server_process import serving


@pytest.fixture(scope="session")
def llm_server(examples, tmp_path_factory):
    """A real mlserve over two tiny LLMs, the MiniLM embedder and one ONNX model."""
    repo = write_llm_repository(tmp_path_factory.mktemp("llm-repo"), examples)
    with serving(repo, log_path=tmp_path_factory.mktemp("llm-logs") / "mlserve.log") as proc:
        proc.repo = repo
        yield proc
