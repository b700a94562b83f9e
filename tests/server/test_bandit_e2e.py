"""A real mlserve process with a bandit on a two-version model: inferences through the split, feedback
where version 2 earns a reward far more often, and the split moves to version 2 by itself (within
seconds: update_s = 0.2). The experiment view shows the bandit; an admin split is refused (409)."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request

import pytest

from mlserve.examples import write_identity_onnx
from tests.server_process import serving

TOML = """version_policy = { all = true }
[traffic]
split = { "1" = 50, "2" = 50 }
bandit = { policy = "thompson", min_share = 0.05, update_s = 0.2 }
"""
REWARD = {"1": 0.2, "2": 0.8}
TARGET_SHARE = 0.9
"""Where the split must get: with a 0.6 gap the posterior soon puts version 2 first with certainty,
so its share goes to 1 - min_share = 0.95; 0.9 leaves room for the Monte-Carlo draws."""


def _call(url: str, body=None, method: str = "GET"):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_bandit_moves_the_split_to_the_better_version(tmp_path):
    for version in ("1", "2"):
        write_identity_onnx(tmp_path / "repo" / "ab" / version / "model.onnx", "FP32")
    (tmp_path / "repo" / "ab" / "model.toml").write_text(TOML)
    rng = random.Random(28)
    with serving(tmp_path / "repo", log_path=tmp_path / "mlserve.log") as server:
        status, reply = _call(f"{server.url}/admin/models/ab/traffic", {"split": {"1": 90, "2": 10}}, "PUT")
        assert status == 409 and "bandit owns the split" in reply["error"], reply
        served = {"1": 0, "2": 0}
        deadline = time.monotonic() + 15
        view: dict = {}
        while time.monotonic() < deadline:
            for _ in range(20):
                body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
                status, answer = _call(f"{server.url}/v2/models/ab/infer", body, "POST")
                assert status == 200, answer
                version = answer["model_version"]
                served[version] += 1
                value = int(rng.random() < REWARD[version])
                status, ack = _call(f"{server.url}/v2/models/ab/feedback", {"id": answer["id"], "value": value}, "POST")
                assert status == 200 and ack["version"] == version, ack
            view = _call(f"{server.url}/admin/models/ab/experiment")[1]["bandit"]
            if view["shares"]["2"] >= TARGET_SHARE:
                break
        assert view["shares"]["2"] >= TARGET_SHARE, (view, served)
        assert view["policy"] == "thompson" and view["updates"] >= 1 and view["last_update"] <= time.time()
        # thompson, two arms: the share is P(best) from the posteriors, held to 1 - min_share.
        assert view["shares"]["2"] == pytest.approx(min(view["p_best"]["2"], 0.95), abs=1e-3)
        assert view["shares"]["1"] >= 0.05 - 1e-9
        traffic = _call(f"{server.url}/admin/models/ab/traffic")[1]
        assert traffic["source"] == "bandit" and traffic["split"]["2"] >= TARGET_SHARE * 100
        # The traffic follows the split: most of what comes next goes to version 2.
        after = sum(_call(f"{server.url}/v2/models/ab/infer", body, "POST")[1]["model_version"] == "2"
                    for _ in range(100))
        assert after >= 80, after
