"""AOTInductor: the pass compiles a small TorchScript model, the `aoti` backend serves the package in
a real server (trusted models only: the model.toml here does not say trusted), and its outputs match
torch's.

Slow: the compile runs a C++ compiler, about 30 s of CPU (1-2 min of wall time on a loaded 2-core
machine). It compiles once for the whole file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlserve.engine import create_backend
from mlserve.errors import ModelLoadError
from mlserve.optimize import create_pass
from mlserve.optimize.base import Options
from mlserve.optimize.publish import publish
from mlserve.optimize.source import open_source
from mlserve.registry.safety import check_trusted
from tests.optimize.models import network, write_data, write_torchscript
from tests.server.http import call, infer_body, output
from tests.server_process import serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aoti")
    write_torchscript(tmp / "models", trusted=False)
    (tmp / "work").mkdir()
    source = open_source(tmp / "models", "tiny", None, None, write_data(tmp / "val.npz"), tmp / "work",
                         trust_repository=True)
    out = tmp / "aoti"
    out.mkdir()
    artifact = create_pass("aoti").run(source, Options(max_batch_size=32), out)
    return tmp, source, artifact


def _want(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return network()(torch.from_numpy(x)).numpy()


def test_package_runs_in_the_backend_for_every_batch_size(compiled):
    _, source, artifact = compiled
    backend = create_backend("aoti", source.config)
    backend.load(artifact.folder, "cpu")
    for rows in (1, 7, 32):
        x = source.data["x"][:rows]
        np.testing.assert_allclose(backend.infer({"x": x})["y"], _want(x), atol=1e-5, rtol=1e-4)
    assert backend.info.platform == "pytorch_aoti" and [s.name for s in backend.info.inputs] == ["x"]
    with pytest.raises(ModelLoadError, match="AOTInductor"):
        check_trusted("aoti", False)


def test_published_package_is_served_only_from_a_trusted_repository(compiled):
    tmp, source, artifact = compiled
    repo = tmp / "models"
    version = publish(repo / "tiny", source.folder, artifact.folder, {"backend": "aoti", "passes": ["aoti"]})
    assert json.loads((repo / "tiny" / str(version) / "optimization.json").read_text())["backend"] == "aoti"
    x = source.data["x"][:8]
    with serving(repo, log_path=tmp / "untrusted.log") as server:
        assert call(f"{server.url}/v2/models/tiny/versions/{version}/ready").status != 200
        assert "AOTInductor" in server.log() and "--trust-repository" in server.log()
    with serving(repo, "--trust-repository", log_path=tmp / "trusted.log") as server:
        answer = call(f"{server.url}/v2/models/tiny/versions/{version}/infer", infer_body(x))
        assert answer.status == 200, answer.body
        np.testing.assert_allclose(output(answer), _want(x), atol=1e-5, rtol=1e-4)
