from __future__ import annotations
from tests.state.conftest import redis_server  # noqa: F401  (one real redis-server for the replica tests)

import pytest

from mlserve.examples import MLP_TOML, write_identity_onnx, write_mlp_onnx


@pytest.fixture(scope="session")
def jobs_repo(tmp_path_factory):
    """mlp (two versions, 768 -> 10, max_batch_size 64), words (a string identity, batch 8) and
    unbatched (max_batch_size 0)."""
    root = tmp_path_factory.mktemp("jobs_repo")
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=1)
    write_mlp_onnx(root / "mlp" / "2" / "model.onnx", seed=2)
    (root / "mlp" / "model.toml").write_text(MLP_TOML)
    write_identity_onnx(root / "words" / "1" / "model.onnx", "BYTES")
    (root / "words" / "model.toml").write_text("max_batch_size = 8\n")
    write_identity_onnx(root / "unbatched" / "1" / "model.onnx", "FP32")
    (root / "unbatched" / "model.toml").write_text("max_batch_size = 0\n")
    return root
