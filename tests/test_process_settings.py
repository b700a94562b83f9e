"""Process-wide knobs come from [server] settings, applied once; a model cannot set them. Each test
runs in a child interpreter: the knobs belong to the whole process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.server_process import ROOT

IO = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 768]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}]}


def _child(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_server_settings_set_torch_threads_and_the_switch_interval_whatever_models_load(tmp_path):
    """Two TorchScript models load after the settings are applied: torch keeps the server's 3 threads
    (on the old code each load set the model's own count, and the last model won)."""
    out = _child(f"""
        import sys, torch
        from pathlib import Path
        from mlserve import process
        from mlserve.config import load_config
        from mlserve.engine.torch_backend import TorchScriptBackend
        from mlserve.examples import write_mlp_torchscript
        from mlserve.spec import parse_model_config

        IO = {IO!r}
        config = load_config(None, environ={{"MLSERVE_SERVER_TORCH_THREADS": "3", "MLSERVE_SERVER_SWITCH_INTERVAL_US": "250"}})
        process.apply(config.server.process)
        for name in ("a", "b"):
            root = Path({str(tmp_path)!r}) / name / "1"
            write_mlp_torchscript(root / "model.pt", seed=1)
            TorchScriptBackend(parse_model_config({{**IO, "intra_op_threads": 1}})).load(root, "cpu")
        print(torch.get_num_threads(), round(sys.getswitchinterval() * 1e6))
    """)
    assert out.splitlines()[-1] == "3 250"


def test_a_torch_model_asking_for_its_own_thread_count_is_refused_by_name(tmp_path):
    out = _child(f"""
        from pathlib import Path
        from mlserve.engine.torch_backend import TorchScriptBackend
        from mlserve.errors import ModelLoadError
        from mlserve.examples import write_mlp_torchscript
        from mlserve.spec import parse_model_config

        IO = {IO!r}
        root = Path({str(tmp_path)!r}) / "m" / "1"
        write_mlp_torchscript(root / "model.pt", seed=1)
        try:
            TorchScriptBackend(parse_model_config({{**IO, "intra_op_threads": 4}})).load(root, "cpu")
        except ModelLoadError as exc:
            print(exc)
    """)
    assert "intra_op_threads = 4" in out and "[server] torch_threads" in out


@pytest.mark.parametrize("key, value", [("TORCH_THREADS", "-1"), ("SWITCH_INTERVAL_US", "10"), ("SWITCH_INTERVAL_US", "1000000")])
def test_out_of_range_process_settings_are_refused_by_name(key, value):
    from mlserve.config import load_config

    with pytest.raises(ValueError, match=key.lower()):
        load_config(None, environ={f"MLSERVE_SERVER_{key}": value})
