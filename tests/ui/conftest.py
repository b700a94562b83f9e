"""A small repository for the status page: mlp (two versions split 50/50, with an experiment, and
version 2 shadowing the requests version 1 answers),
drifty (identity over 4 columns with a N(0,1) reference), and tiny-gpt2 (the LLM panel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlserve.examples import write_identity_onnx, write_mlp_onnx
from mlserve.keys import create_key
from tests.server_process import MlserveProcess

MLP_TOML = """max_batch_size = 64
version_policy = { all = true }
[traffic]
split = { "1" = 50, "2" = 50 }
shadow = { version = "2", percent = 100 }
experiment = { outcome = "binary", min_samples = 10 }
"""
DRIFTY_TOML = """max_batch_size = 64
[drift]
window = 400
min_rows = 100
"""
# A point every 0.5 s, kept for 20 minutes: every request a test sent stays in the history.
HISTORY_ENV = {"MLSERVE_MONITOR_STATUS_INTERVAL_S": "0.5", "MLSERVE_MONITOR_STATUS_POINTS": "2400"}


def write_ui_repository(root: Path, with_llm: bool) -> Path:
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=1)
    write_mlp_onnx(root / "mlp" / "2" / "model.onnx", seed=2)
    (root / "mlp" / "model.toml").write_text(MLP_TOML)
    write_identity_onnx(root / "drifty" / "1" / "model.onnx", "FP32", width=4)
    (root / "drifty" / "model.toml").write_text(DRIFTY_TOML)
    reference = np.random.default_rng(7).standard_normal((2000, 4)).astype(np.float32)
    np.savez(root / "drifty" / "1" / "reference.npz", x=reference)
    if with_llm:
        from mlserve.examples_llm import write_tiny_gpt2

        write_tiny_gpt2(root / "tiny-gpt2" / "1")
    return root


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory):
    """Auth off; the history takes a point every 0.5 s so sparklines fill within seconds."""
    root = write_ui_repository(tmp_path_factory.mktemp("ui_repo"), with_llm=True)
    proc = MlserveProcess(root, log_path=tmp_path_factory.mktemp("ui_logs") / "mlserve.log", env=HISTORY_ENV)
    yield proc.wait_ready()
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory):
    """API keys on: `reader` may infer, `ops` may also administer."""
    root = write_ui_repository(tmp_path_factory.mktemp("ui_auth_repo"), with_llm=False)
    keys_file = tmp_path_factory.mktemp("ui_keys") / "keys.json"
    tokens = {"reader": create_key(keys_file, "reader", ("infer",)),
              "ops": create_key(keys_file, "ops", ("infer", "admin"))}
    proc = MlserveProcess(root, "--auth-keys", str(keys_file), env=HISTORY_ENV,
                          log_path=tmp_path_factory.mktemp("ui_auth_logs") / "mlserve.log")
    proc.tokens = tokens
    yield proc.wait_ready()
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="session")
def driven(ui_server):
    """The traffic, sent once; the drift alert is in before any test reads the page."""
    from tests.ui.traffic import drive, version, wait_for

    result = drive(ui_server.url)
    wait_for(lambda o: (version(o, "drifty", "1")["drift"] or {}).get("status") == "alert", ui_server.url)
    return result
