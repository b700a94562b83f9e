"""Artifacts that can run code when read (TorchScript, torch.export) load only when trusted."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mlserve.errors import ModelLoadError
from mlserve.registry.safety import check_trusted
from mlserve.spec import parse_model_config
from tests.registry.helpers import index, post, write_model
from tests.server_process import serving

TS_TOML = """\
backend = "torchscript"
{trusted}
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 3]

[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 2]
"""


class CreatesFile:
    """Unpickling this opens (creates) `path`: what a hostile model file would do, harmlessly."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _exported_linear() -> tuple[torch.nn.Module, bytes]:
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2).eval()
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(module, (torch.zeros(1, 3),)), buffer)
    return module, buffer.getvalue()


def write_hostile_pt2(path: Path, marker: Path) -> None:
    """A real torch.export archive whose `weight` is marked as pickled and replaced by a payload:
    torch.export.load falls back to torch.load(weights_only=False) for it and runs the payload."""
    _, archive = _exported_linear()
    payload = io.BytesIO()
    torch.save(CreatesFile(str(marker)), payload)
    source = zipfile.ZipFile(io.BytesIO(archive))
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name in source.namelist():
            data = source.read(name)
            if name.endswith("model_weights_config.json"):
                config = json.loads(data)
                config["config"]["weight"]["use_pickle"] = True
                data = json.dumps(config).encode()
            elif name.endswith("weights/weight_0"):
                data = payload.getvalue()
            out.writestr(name, data)


def write_hostile_pt(path: Path, marker: Path) -> None:
    """A pickle that would create `marker` if anything unpickled it, named like a TorchScript file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": CreatesFile(str(marker))}, str(path))


def test_the_hostile_pt2_really_runs_code_when_read(tmp_path):
    """The fixture is honest: torch.export.load on it creates the file (so refusing to read matters)."""
    marker = tmp_path / "ran"
    write_hostile_pt2(tmp_path / "model.pt2", marker)
    with pytest.raises(Exception):  # noqa: B017 - whatever the file raises once its code has run
        torch.export.load(str(tmp_path / "model.pt2"))
    assert marker.exists()


@pytest.mark.parametrize("backend", ["torchscript", "torch_export"])
def test_code_running_backends_need_trust(backend):
    with pytest.raises(ModelLoadError, match="--trust-repository or set trusted = true"):
        check_trusted(backend, False)
    check_trusted(backend, True)
    for safe in ("onnx", "llm", "tensorrt"):
        check_trusted(safe, False)


def test_trusted_is_a_boolean_in_model_toml():
    assert parse_model_config({"trusted": True}).trusted and not parse_model_config({}).trusted
    with pytest.raises(ValueError, match="trusted must be true or false"):
        parse_model_config({"trusted": "yes"})


def test_untrusted_torch_artifacts_are_never_read(tmp_path):
    root, outside = tmp_path / "repo", tmp_path / "outside"
    outside.mkdir()
    write_hostile_pt(root / "evil_pt" / "1" / "model.pt", outside / "pt-ran")
    (root / "evil_pt" / "model.toml").write_text(TS_TOML.format(trusted=""))
    write_hostile_pt2(root / "evil_pt2" / "1" / "model.pt2", outside / "pt2-ran")
    module, archive = _exported_linear()
    (root / "good_pt2" / "1").mkdir(parents=True)
    (root / "good_pt2" / "1" / "model.pt2").write_bytes(archive)
    (root / "good_pt2" / "model.toml").write_text("trusted = true\nmax_batch_size = 0\n")
    write_model(root, "plain", [1])
    with serving(root, log_path=tmp_path / "mlserve.log") as server:
        states = {row["name"]: row for row in index(server.url)}
        x = np.arange(3, dtype=np.float32).reshape(1, 3)
        body = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": x.ravel().tolist()}]}
        status, answer = post(f"{server.url}/v2/models/good_pt2/infer", json.dumps(body))
    for name in ("evil_pt", "evil_pt2"):
        assert states[name]["state"] == "UNAVAILABLE", states[name]
        assert "not trusted" in states[name]["reason"] and "--trust-repository" in states[name]["reason"]
    assert not (outside / "pt-ran").exists() and not (outside / "pt2-ran").exists()
    assert states["plain"]["state"] == "READY" and states["good_pt2"]["state"] == "READY"
    assert status == 200, answer
    (output,) = answer["outputs"]
    got = np.asarray(output["data"], np.float32).reshape(output["shape"])
    expected = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["torchscript", "torch_export", "aoti"])
def test_an_uploaded_version_needs_trust_uploads_whatever_the_model_says(tmp_path, backend):
    from mlserve.registry.safety import UPLOAD_MARKER, check_version_trusted

    repository_version, uploaded = tmp_path / "1", tmp_path / "2"
    repository_version.mkdir()
    uploaded.mkdir()
    (uploaded / UPLOAD_MARKER).write_text('{"source": "api 127.0.0.1"}')
    check_version_trusted(backend, repository_version, is_model_trusted=True, trust_uploads=False)
    with pytest.raises(ModelLoadError, match="trust_uploads"):
        check_version_trusted(backend, uploaded, is_model_trusted=True, trust_uploads=False)
    check_version_trusted(backend, uploaded, is_model_trusted=False, trust_uploads=True)
    check_version_trusted("onnx", uploaded, is_model_trusted=False, trust_uploads=False)
