from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlserve.examples import MLP_TOML, write_identity_onnx, write_mlp_onnx
from tests.models import copy_models
from tests.server_process import MlserveProcess

DRIFT_COLUMNS = 4
DRIFT_TOML = """max_batch_size = 64
[drift]
window = 400
min_rows = 100
"""


def write_monitor_repository(root: Path, examples: Path) -> Path:
    """The examples (copied from `examples`), plus `drifty` (identity over 4 FP32 columns with a N(0,1)
    reference.npz) and `nodrift` (the same model with drift turned off)."""
    copy_models(examples, root)
    return write_drift_models(root)


def write_drift_models(root: Path) -> Path:
    """`drifty` and `nodrift` (see write_monitor_repository)."""
    write_identity_onnx(root / "drifty" / "1" / "model.onnx", "FP32", width=DRIFT_COLUMNS)
    (root / "drifty" / "model.toml").write_text(DRIFT_TOML)
    reference = np.random.default_rng(123).standard_normal((5000, DRIFT_COLUMNS)).astype(np.float32)
    np.savez(root / "drifty" / "1" / "reference.npz", x=reference)
    write_identity_onnx(root / "nodrift" / "1" / "model.onnx", "FP32", width=DRIFT_COLUMNS)
    (root / "nodrift" / "model.toml").write_text("[drift]\nenabled = false\n")
    return root


@pytest.fixture(scope="session")
def monitor_repo(examples, tmp_path_factory):
    return write_monitor_repository(tmp_path_factory.mktemp("monitor_repo"), examples)


@pytest.fixture(scope="session")
def lean_monitor_repo(tmp_path_factory):
    """`mlp` (the example MLP, version 1) and the drift models: for a test that starts a server of its
    own and sends no request to any other model (no LLM to load first)."""
    root = tmp_path_factory.mktemp("lean_monitor_repo")
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=1)
    (root / "mlp" / "model.toml").write_text(MLP_TOML)
    return write_drift_models(root)


@pytest.fixture(scope="session")
def mserver(monitor_repo, tmp_path_factory):
    """A live mlserve over the monitor repository, logging every prediction, logs as JSON."""
    logs = tmp_path_factory.mktemp("monitor_logs")
    proc = MlserveProcess(
        monitor_repo, "--prediction-log", str(logs / "predlog"), "--log-sample-rate", "1", "--log-format", "json",
        log_path=logs / "mlserve.log",
    ).wait_ready()
    proc.predlog = logs / "predlog"
    yield proc
    assert proc.stop() == 0, proc.log()
