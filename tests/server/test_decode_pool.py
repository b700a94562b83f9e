"""The decode pool's child process (large JSON bodies) dies with the server, SIGKILL included."""

from __future__ import annotations

import signal

import numpy as np
import orjson

from mlserve.examples import MLP_TOML, write_mlp_onnx
from tests.processes import children_of, wait_gone
from tests.server.http import call, infer_body, output
from tests.server_process import MlserveProcess


def test_the_decode_child_does_not_outlive_a_killed_server(tmp_path):
    repo = tmp_path / "models"
    write_mlp_onnx(repo / "mlp" / "1" / "model.onnx", seed=1)
    (repo / "mlp" / "model.toml").write_text(MLP_TOML)
    server = MlserveProcess(repo, log_path=tmp_path / "m.log").wait_ready()
    try:
        x = np.random.default_rng(0).standard_normal((64, 768)).astype(np.float32)
        body = orjson.dumps(infer_body(x), option=orjson.OPT_INDENT_2)
        assert len(body) > 1 << 20  # over a MiB: decoded in the child
        answer = call(f"{server.url}/v2/models/mlp/infer", body)
        assert answer.status == 200 and output(answer).shape == (64, 10), answer.body
        children = children_of(server.proc.pid)
        assert children, "the large body was not decoded in a child process"
        server.signal(signal.SIGKILL)
        server.proc.wait(30)
        assert wait_gone(children) == [], f"children {children} outlived the server"
    finally:
        server.stop()
