from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlserve.examples import write_examples, write_identity_onnx
from tests.server_process import MlserveProcess

DRIFT_COLUMNS = 4
DRIFT_TOML = """max_batch_size = 64
[drift]
window = 400
min_rows = 100
"""


def write_monitor_repository(root: Path) -> Path:
    """The examples, plus `drifty` (identity over 4 FP32 columns with a N(0,1) reference.npz) and
    `nodrift` (the same model with drift turned off)."""
    write_examples(root)
    write_identity_onnx(root / "drifty" / "1" / "model.onnx", "FP32", width=DRIFT_COLUMNS)
    (root / "drifty" / "model.toml").write_text(DRIFT_TOML)
    reference = np.random.default_rng(123).standard_normal((5000, DRIFT_COLUMNS)).astype(np.float32)
    np.savez(root / "drifty" / "1" / "reference.npz", x=reference)
    write_identity_onnx(root / "nodrift" / "1" / "model.onnx", "FP32", width=DRIFT_COLUMNS)
    (root / "nodrift" / "model.toml").write_text("[drift]\nenabled = false\n")
    return root


@pytest.fixture(scope="session")
def monitor_repo(tmp_path_factory):
    return write_monitor_repository(tmp_path_factory.mktemp("monitor_repo"))


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
