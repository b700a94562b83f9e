"""The mlflow:// store against a real MLflow tracking server (mlflow 3.17.2 from its own venv, SQLite
backend, local artifact root behind the artifact proxy): models logged and registered with MLflow's
own client, the @champion alias served and followed live, flavors refused by name, and an outage
that changes nothing served."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mlserve.errors import ModelLoadError
from mlserve.examples import write_mlp_onnx
from mlserve.engine.base import version_backend
from mlserve.registry.mlflow import MlflowStore, model_toml, parse_mlflow_uri, proxy_path
from mlserve.registry.mlflow_toml import to_toml
from mlserve.spec import parse_model_config
from mlserve.spec.mlmodel import parse_mlmodel
from tests.registry.conftest import moto_server, s3_env  # noqa: F401 - the S3 store tests' fixtures
from tests.registry.helpers import WIDTH, LoadGenerator, index, infer, reference, wait_until, write_version
from tests.registry.s3util import upload
from tests.registry.mlflowutil import MlflowServer, require_mlflow_venv
from tests.registry.test_hot_swap import _metric
from tests.optimize.models import write_data, write_torchscript
from tests.optimize.runs import wait_finished_run
from tests.routing.models import WIDTH as CANARY_WIDTH
from tests.routing.models import write_failing_onnx, write_scale_onnx
from tests.server.http import call
from tests.server_process import ROOT, MlserveProcess

SIGNATURE = f"x:float32:-1,{WIDTH};y:float32:-1,{WIDTH}"
X = np.random.default_rng(3).standard_normal((2, WIDTH)).astype(np.float32)


@dataclass
class Registry:
    """The tracking server, and the files each logged version was made from."""

    server: MlflowServer
    files: dict[tuple[str, int], Path]


MLP_SIGNATURE = "x:float32:-1,768;y:float32:-1,10"
CANARY_SIGNATURE = f"x:float32:-1,{CANARY_WIDTH};y:float32:-1,{CANARY_WIDTH}"
TINY_SIGNATURE = "x:float32:-1,16;y:float32:-1,4"
CANARY_TOML = """max_batch_size = 4
[challenger]
steps = [50, 100]
interval_s = 0.5
min_requests = 3
max_p99_ratio = 1000.0
"""
"""Champion 1's mlserve.toml tag: a rollout of two short steps, judged on errors (latency on shared
cores is too noisy to judge in a test)."""


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One tracking server for the module, every model logged by one run of MLflow's client:
    mlp 1, 2 (@champion -> 1); swap and outage 1, 2 (@champion -> 1); torchy 1 (pytorch flavor, a
    TorchScript file as data/model.pth); sk 1 (sklearn flavor); canary 1 (x * 1, @champion, a quick
    [challenger] plan in its tag), 2 (fails on x[:, 0] = 9), 3 (x * 2); tiny 1 (pytorch flavor, the
    optimize tests' TorchScript MLP with its reference.npz, @champion)."""
    require_mlflow_venv()
    root = tmp_path_factory.mktemp("mlflow")
    server = MlflowServer(root).start()
    files, models = {}, []
    for seed in (1, 2):
        folder = root / f"src-mlp-{seed}"
        write_mlp_onnx(folder / "model.onnx", seed)
        files["mlp", seed] = folder / "model.onnx"
        models.append({"name": "mlp", "flavor": "onnx", "folder": str(folder), "signature": MLP_SIGNATURE,
                       "alias": "champion" if seed == 2 else ""})
    for name in ("swap", "outage"):
        for version in (1, 2):
            files[name, version] = write_version(root / "src", name, version)
            models.append({"name": name, "flavor": "onnx", "folder": str(files[name, version].parent),
                           "signature": SIGNATURE, "alias": "champion" if version == 1 else ""})
    models.append({"name": "torchy", "flavor": "pytorch", "folder": str(_torchscript_folder(root / "torchy")),
                   "signature": SIGNATURE, "alias": "champion"})
    (root / "sk").mkdir()
    (root / "sk" / "model.pkl").write_bytes(b"never read")
    models.append({"name": "sk", "flavor": "sklearn", "folder": str(root / "sk"), "alias": "champion"})
    for version, write in ((1, lambda p: write_scale_onnx(p, 1.0)), (2, lambda p: write_failing_onnx(p, 1.0)),
                           (3, lambda p: write_scale_onnx(p, 2.0))):
        folder = root / f"src-canary-{version}"
        write(folder / "model.onnx")
        models.append({"name": "canary", "flavor": "onnx", "folder": str(folder), "signature": CANARY_SIGNATURE,
                       "alias": "champion" if version == 1 else ""})
    tiny = write_torchscript(root / "tiny-src")
    (tiny / "data").mkdir()
    (tiny / "model.pt").rename(tiny / "data" / "model.pth")
    write_data(tiny / "reference.npz")
    models.append({"name": "tiny", "flavor": "pytorch", "folder": str(tiny), "signature": TINY_SIGNATURE,
                   "alias": "champion"})
    try:
        versions = server.log_models(models)
        assert versions == [1, 2, 1, 2, 1, 2, 1, 1, 1, 2, 3, 1], versions
        server.set_version_tag("tiny", 1, "mlserve.toml", "max_batch_size = 8\n")
        server.set_version_tag("canary", 1, "mlserve.toml", CANARY_TOML)
        server.set_alias("mlp", "champion", 1)  # the older one: the alias, not the newest, is served
        server.set_version_tag("mlp", 1, "mlserve.toml", "max_batch_size = 4\nmax_queue_delay_us = 100\n")
        yield Registry(server, files)
    finally:
        server.kill()


def _torchscript_folder(folder: Path) -> Path:
    """data/model.pth holding a TorchScript module computing x + 1 (what mlflow.pytorch saves for one)."""
    import torch

    class AddOne(torch.nn.Module):
        def forward(self, x):
            return x + 1.0

    (folder / "data").mkdir(parents=True)
    torch.jit.save(torch.jit.script(AddOne()), str(folder / "data" / "model.pth"))
    return folder


def _serve(server: MlflowServer, tmp_path, models: str, *args: str, env: dict | None = None) -> MlserveProcess:
    uri = f"mlflow://127.0.0.1:{server.port}?models={models}"
    env = {"MLSERVE_REGISTRY_CACHE_DIR": str(tmp_path / "cache"), **(env or {})}
    return MlserveProcess(uri, *args, log_path=tmp_path / "mlserve.log", env=env).wait_ready(120)


def _states(url: str, model: str) -> dict[str, tuple[str, str]]:
    return {r.get("version"): (r["state"], r.get("reason", "")) for r in index(url) if r["name"] == model}


def _reference(registry: Registry, model: str, version: int, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(registry.files[model, version])).run(None, {"x": x})[0]


# ---- against a real tracking server ------------------------------------------------------------


@pytest.mark.timeout(900)
def test_serves_the_champion_and_answers_equal_onnxruntime(registry, tmp_path):
    """Two versions registered, @champion on the older one: that one is served, by its number, and
    its answers equal onnxruntime's on the same file; the signature gave the tensors and the
    version's mlserve.toml tag the batching."""
    proc = _serve(registry.server, tmp_path, "mlp")
    try:
        assert _states(proc.url, "mlp") == {"1": ("READY", "")}
        x = np.random.default_rng(0).standard_normal((3, 768)).astype(np.float32)
        status, body = infer(proc.url, "mlp", x)
        assert status == 200, body
        assert body["model_version"] == "1"
        got = np.asarray(body["outputs"][0]["data"], np.float32).reshape(body["outputs"][0]["shape"])
        np.testing.assert_allclose(got, _reference(registry, "mlp", 1, x), rtol=1e-5, atol=1e-5)
        with urllib.request.urlopen(f"{proc.url}/v2/models/mlp", timeout=10) as resp:
            meta = json.loads(resp.read())
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("x", "FP32", [-1, 768])]
        assert _metric(proc.url, "mlserve_repository_up", {"kind": "mlflow"}) == 1.0
        with urllib.request.urlopen(f"{proc.url}/v2/models/mlp/config", timeout=10) as resp:
            assert json.loads(resp.read())["max_batch_size"] == 4  # from the version's mlserve.toml tag
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.mark.timeout(600)
def test_moving_champion_under_load_swaps_with_zero_failed_requests(registry, tmp_path):
    poll_s = 0.5
    references = {v: _reference(registry, "swap", v, X) for v in (1, 2)}
    proc = _serve(registry.server, tmp_path, "swap", "--poll-interval", str(poll_s))
    try:
        with LoadGenerator(proc.port, "swap", X, num_threads=4) as load:
            wait_until(lambda: len(load.answers_live()) > 50, timeout=30)
            registry.server.set_alias("swap", "champion", 2)
            alias_set = time.monotonic()
            wait_until(lambda: _states(proc.url, "swap") == {"2": ("READY", "")}, timeout=60, interval=0.02)
            swapped = time.monotonic()
            wait_until(lambda: any(a.version == 2 for a in load.answers_live()), timeout=10)
            time.sleep(0.5)  # some answers from version 2 alone
        answers = load.answers
        failed = [a for a in answers if a.status != 200]
        assert not failed, f"{len(failed)} of {len(answers)} failed, first: {failed[0]}"
        for answer in answers:
            np.testing.assert_array_equal(answer.output, references[answer.version])
        first_v2 = min(a.done_at for a in answers if a.version == 2)
        load_s = _metric(proc.url, "mlserve_model_load_seconds", {"model": "swap", "version": "2"})
        warm_s = _metric(proc.url, "mlserve_model_warmup_seconds", {"model": "swap", "version": "2"})
        # the poll interval, one pass's listing and download, load and warm-up; slack for shared cores
        assert first_v2 - alias_set <= poll_s + load_s + warm_s + 5.0, (first_v2 - alias_set, load_s, warm_s)
        assert not [a for a in answers if a.version == 1 and a.sent_at > swapped], "version 1 answered after the swap"
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.mark.timeout(600)
def test_flavors_pytorch_needs_trust_and_unknown_flavors_are_named(registry, tmp_path):
    proc = _serve(registry.server, tmp_path, "torchy,sk")
    try:
        state, reason = _states(proc.url, "torchy")["1"]
        assert state == "UNAVAILABLE" and "can run code" in reason and "not trusted" in reason, reason
        state, reason = _states(proc.url, "sk")["1"]
        assert state == "UNAVAILABLE" and "MLflow flavor sklearn cannot be served" in reason, reason
        assert infer(proc.url, "torchy", X)[0] == 503
    finally:
        assert proc.stop() == 0, proc.log()
    (tmp_path / "trusted").mkdir()
    trusted = _serve(registry.server, tmp_path / "trusted", "torchy", "--trust-repository")
    try:
        assert _states(trusted.url, "torchy") == {"1": ("READY", "")}
        status, body = infer(trusted.url, "torchy", X)  # its inputs came from the MLmodel signature
        assert status == 200, body
        np.testing.assert_allclose(np.asarray(body["outputs"][0]["data"], np.float32).reshape(X.shape), X + 1)
    finally:
        assert trusted.stop() == 0, trusted.log()


@pytest.mark.timeout(900)
def test_tracking_server_killed_mid_poll_serving_continues_and_recovery_is_logged(registry, tmp_path):
    server = registry.server
    proc = _serve(server, tmp_path, "outage", "--poll-interval", "0.3")
    try:
        with LoadGenerator(proc.port, "outage", X, num_threads=2) as load:
            wait_until(lambda: len(load.answers_live()) > 20, timeout=30)
            server.kill()
            wait_until(lambda: "unreachable" in proc.log(), timeout=30)
            wait_until(lambda: _metric(proc.url, "mlserve_repository_up", {"kind": "mlflow"}) == 0.0, timeout=30)
            during = len(load.answers_live())
            wait_until(lambda: len(load.answers_live()) > during + 50, timeout=30)  # still answering
            server.start()
            wait_until(lambda: "reachable again" in proc.log(), timeout=120)
            wait_until(lambda: _metric(proc.url, "mlserve_repository_up", {"kind": "mlflow"}) == 1.0, timeout=30)
        failed = [a for a in load.answers if a.status != 200]
        assert not failed, f"{len(failed)} of {len(load.answers)} failed, first: {failed[0]}"
        assert {a.version for a in load.answers} == {1}
        server.set_alias("outage", "champion", 2)  # polling goes on after the outage
        wait_until(lambda: _states(proc.url, "outage") == {"2": ("READY", "")}, timeout=60)
        # an alias moved to a version whose artifacts cannot be read: named, and version 2 serves on
        unreadable = server.register_missing("outage")
        server.set_alias("outage", "champion", unreadable)
        wait_until(lambda: f"outage version {unreadable}: no MLmodel" in _states(proc.url, "outage").get(None, ("", ""))[1],
                   timeout=60)
        assert _states(proc.url, "outage")["2"][0] == "READY"
        assert infer(proc.url, "outage", X)[1]["model_version"] == "2"
    finally:
        assert proc.stop() == 0, proc.log()


def _rollout(url: str, model: str) -> dict:
    with urllib.request.urlopen(f"{url}/admin/models/{model}/rollout", timeout=10) as resp:
        return json.loads(resp.read())["rollout"] or {}


def _mlflow_get(server: MlflowServer, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/{path}", timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _alias(server: MlflowServer, model: str, alias: str) -> int | None:
    status, body = _mlflow_get(server, f"registered-models/alias?name={model}&alias={alias}")
    return int(body["model_version"]["version"]) if status == 200 else None


def _version_tags(server: MlflowServer, model: str, version: int) -> dict[str, str]:
    _, body = _mlflow_get(server, f"model-versions/get?name={model}&version={version}")
    return {t["key"]: t["value"] for t in body["model_version"].get("tags", [])}


@pytest.mark.timeout(600)
def test_challenger_rollout_that_breaches_is_rolled_back_and_the_alias_cleared(registry, tmp_path):
    """@challenger on a version that fails: mlserve rolls it out over @champion (the champion's
    [challenger] plan), the breach rolls it back, the challenger alias is deleted in MLflow and the
    version tagged with the reason, and it unloads; then a good @challenger is promoted: @champion
    moves to it in MLflow and the old champion unloads. No request fails but those the failing
    canary answered."""
    server = registry.server
    bad = np.full((1, CANARY_WIDTH), 9.0, np.float32)  # x[:, 0] = 9: version 2 fails it, 1 and 3 do not
    proc = _serve(server, tmp_path, "canary", "--poll-interval", "0.3")
    try:
        assert _states(proc.url, "canary") == {"1": ("READY", "")}
        with LoadGenerator(proc.port, "canary", bad, num_threads=2) as load:
            server.set_alias("canary", "challenger", 2)
            wait_until(lambda: _rollout(proc.url, "canary").get("version") == "2", timeout=60)
            wait_until(lambda: _rollout(proc.url, "canary")["status"] != "running", timeout=60)
            rolled_back_at = time.monotonic()
            rollout = _rollout(proc.url, "canary")
            assert rollout["status"] == "rolled_back" and "error rate" in rollout["reason"], rollout
            assert rollout["stable"] == "1"
            wait_until(lambda: _states(proc.url, "canary") == {"1": ("READY", "")}, timeout=60)
            time.sleep(0.3)  # answers after the unload, from version 1 alone
        late = [a for a in load.answers if a.sent_at > rolled_back_at + 0.2]
        assert late and all(a.status == 200 and a.version == 1 for a in late), late[:3]
        assert {a.version for a in load.answers if a.status == 200} == {1}
        assert _alias(server, "canary", "challenger") is None and _alias(server, "canary", "champion") == 1
        # the outcome tag is written after the aliases move (dataplane/mlflow_follower.py): wait for it
        wait_until(lambda: "mlserve.rollout" in _version_tags(server, "canary", 2), timeout=60)
        assert _version_tags(server, "canary", 2)["mlserve.rollout"].startswith("rolled back: error rate")
        notes = [h for h in _rollout(proc.url, "canary")["history"] if h["event"] == "mlflow"]
        assert notes and "@challenger deleted" in notes[0]["done"], notes

        good = np.ones((1, CANARY_WIDTH), np.float32)
        with LoadGenerator(proc.port, "canary", good, num_threads=2) as load:
            server.set_alias("canary", "challenger", 3)
            wait_until(lambda: _rollout(proc.url, "canary").get("version") == "3", timeout=60)
            wait_until(lambda: _rollout(proc.url, "canary")["status"] != "running", timeout=60)
            assert _rollout(proc.url, "canary")["status"] == "promoted", _rollout(proc.url, "canary")
            wait_until(lambda: _states(proc.url, "canary") == {"3": ("READY", "")}, timeout=60)
        failed = [a for a in load.answers if a.status != 200]
        assert not failed, f"{len(failed)} of {len(load.answers)} failed, first: {failed[0]}"
        assert _alias(server, "canary", "champion") == 3 and _alias(server, "canary", "challenger") is None
        wait_until(lambda: "mlserve.rollout" in _version_tags(server, "canary", 3), timeout=60)
        assert _version_tags(server, "canary", 3)["mlserve.rollout"] == "promoted"
        assert infer(proc.url, "canary", good)[1]["model_version"] == "3"
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.mark.timeout(600)
def test_a_rollback_in_mlserve_moves_the_champion_alias_back_in_mlflow(registry, tmp_path):
    """POST /admin/models/{m}/rollback on an MLflow model: with no earlier @champion seen it is a 409
    saying so and changes nothing; after @champion moved 1 -> 2 in MLflow, it moves the alias back to 1
    in MLflow and answers once version 1 serves here again."""
    server = registry.server
    proc = _serve(server, tmp_path, "mlp", "--poll-interval", "0.3")
    try:
        assert _states(proc.url, "mlp") == {"1": ("READY", "")}
        refused = call(f"{proc.url}/admin/models/mlp/rollback", {})
        assert refused.status == 409 and "no earlier @champion" in refused.body["error"], refused
        assert _alias(server, "mlp", "champion") == 1
        server.set_alias("mlp", "champion", 2)
        wait_until(lambda: _states(proc.url, "mlp") == {"2": ("READY", "")}, timeout=60)
        done = call(f"{proc.url}/admin/models/mlp/rollback", {}, timeout=90)
        assert done.status == 200, done
        assert _alias(server, "mlp", "champion") == 1  # written back to the registry
        x = np.random.default_rng(1).standard_normal((2, 768)).astype(np.float32)
        status, body = infer(proc.url, "mlp", x)
        assert status == 200 and body["model_version"] == "1", body
        wait_until(lambda: _states(proc.url, "mlp") == {"1": ("READY", "")}, timeout=60)
    finally:
        server.set_alias("mlp", "champion", 1)
        assert proc.stop() == 0, proc.log()


@pytest.mark.timeout(600)
def test_optimize_registers_the_winner_with_its_record_and_lineage(registry):
    """`mlserve optimize` on the @champion of a registered model: the winner becomes a new model
    version with optimization.json as an artifact and as tags, its source version named, the source's
    mlserve.toml tag carried over, and --rollout challenger points that alias at it."""
    server = registry.server
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-m", "mlserve", "optimize", "--models", f"mlflow://127.0.0.1:{server.port}",
         "--model", "tiny", "--passes", "graph_opt", "--timing-s", "0.1", "--trust-repository",
         "--rollout", "challenger"],
        capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    tags = _version_tags(server, "tiny", 2)
    assert "registered tiny version 2" in done.stderr and f"published {tags['mlserve.winner']} as version 2" in done.stdout
    assert tags["mlserve.source_version"] == "1" and tags["mlserve.backend"] == "onnx", tags
    assert tags["mlserve.passes"].split(",")[0] == "export" and tags["mlserve.winner"] in ("export", "graph_opt")
    record = json.loads(tags["mlserve.optimization"])
    assert record["source_version"] == 1 and record["winner"] == tags["mlserve.winner"]
    assert tags["mlserve.toml"] == "max_batch_size = 8\n"
    assert _alias(server, "tiny", "challenger") == 2 and _alias(server, "tiny", "champion") == 1
    _, version = _mlflow_get(server, "model-versions/get?name=tiny&version=2")
    assert "from version 1" in version["model_version"]["description"]
    _, run = _mlflow_get(server, f"runs/get?run_id={version['model_version']['run_id']}")
    _, source = _mlflow_get(server, "model-versions/get?name=tiny&version=1")
    run_tags = {t["key"]: t["value"] for t in run["run"]["data"].get("tags", [])}
    assert run_tags["mlserve.source_run_id"] == source["model_version"]["run_id"]
    root = proxy_path(f"{run['run']['info']['artifact_uri']}/model")
    with urllib.request.urlopen(f"{server.url}/api/2.0/mlflow-artifacts/artifacts?path={root}", timeout=30) as resp:
        names = {f["path"].rsplit("/", 1)[-1] for f in json.loads(resp.read())["files"]}
    assert {"model.onnx", "optimization.json", "reference.npz", "MLmodel", "SHA256SUMS"} <= names, names


AUTO_TOML = """max_batch_size = 8
[optimize]
on_new_version = true
passes = ["graph_opt"]
timing_s = 0.1
rollout = [50, 100]
rollout_interval_s = 1
[challenger]
min_requests = 3
max_p99_ratio = 1000.0
"""
"""A champion optimized on arrival, its winner rolled out in two 1 s steps (the [challenger] plan takes
them from [optimize]), judged on errors (latency on shared cores is too noisy to judge in a test)."""


@pytest.mark.timeout(900)
def test_a_champion_is_optimized_on_arrival_registered_as_challenger_and_rolled_out(registry, tmp_path):
    """A registered model whose @champion's mlserve.toml tag says `[optimize] on_new_version = true`
    with rollout steps: with no further request, the server optimizes the champion, registers the
    winner as a new model version (lineage and settings as tags) and points @challenger at it; its
    registry follower rolls it out under traffic and promotes it: @champion moves to it in MLflow, and
    every request is answered by one version or the other. The winner, now champion, starts no run of
    its own, and a restart finds the run recorded."""
    server = registry.server
    source = _register_tiny(server, tmp_path, "autotiny", AUTO_TOML)
    x = np.load(source / "reference.npz")["x"][:2]
    proc = _serve(server, tmp_path, "autotiny", "--poll-interval", "0.3", "--trust-repository")
    try:
        run = wait_finished_run(proc.url, "autotiny", timeout=300)
        registered = run["published_version"]
        assert run["state"] == "published" and run["source_version"] == 1 and registered == 2, run
        assert run["deployment"] == {"registered": registered, "alias": "challenger"}, run
        tags = _version_tags(server, "autotiny", registered)
        assert tags["mlserve.source_version"] == "1" and tags["mlserve.toml"] == AUTO_TOML, tags
        assert tags["mlserve.winner"] == run["winner"]
        with LoadGenerator(proc.port, "autotiny", x, num_threads=2) as load:
            wait_until(lambda: _rollout(proc.url, "autotiny").get("version") == str(registered), timeout=60)
            wait_until(lambda: _rollout(proc.url, "autotiny")["status"] != "running", timeout=120)
            rollout = _rollout(proc.url, "autotiny")
            assert rollout["status"] == "promoted" and rollout["stable"] == "1", rollout
            assert rollout["steps"] == [50.0, 100.0], rollout
            wait_until(lambda: _states(proc.url, "autotiny") == {str(registered): ("READY", "")}, timeout=60)
        failed = [a for a in load.answers if a.status != 200]
        assert not failed, f"{len(failed)} of {len(load.answers)} failed, first: {failed[0]}"
        assert {a.version for a in load.answers} == {1, registered}
        assert _alias(server, "autotiny", "champion") == registered
        assert _alias(server, "autotiny", "challenger") is None
        status, body = infer(proc.url, "autotiny", x)
        expected = _torchscript_reference(source / "data" / "model.pth", x)
        assert status == 200 and body["model_version"] == str(registered), body
        np.testing.assert_allclose(np.asarray(body["outputs"][0]["data"], np.float32).reshape(expected.shape),
                                   expected, rtol=1e-4, atol=1e-5)
        runs = call(f"{proc.url}/admin/models/autotiny/optimize").body["runs"]
        assert [r["source_version"] for r in runs] == [1], runs
    finally:
        assert proc.stop() == 0, proc.log()
    again = _serve(server, tmp_path, "autotiny", "--trust-repository")
    try:
        runs = call(f"{again.url}/admin/models/autotiny/optimize").body["runs"]
        assert [(r["source_version"], r["state"]) for r in runs] == [(1, "published")], runs
    finally:
        assert again.stop() == 0, again.log()
    _, listed = _mlflow_get(server, "model-versions/search?filter=name%3D%27autotiny%27")
    assert sorted(int(v["version"]) for v in listed["model_versions"]) == [1, registered]  # nothing more registered


@pytest.mark.timeout(900)
def test_without_rollout_steps_the_winner_becomes_champion_and_a_restart_finds_what_a_stopped_run_registered(
        registry, tmp_path):
    """No rollout steps: the winner is registered and @champion moves to it, so it serves once
    loaded. A run recorded as interrupted after it registered (the server stopped between the
    registration and the record) is found registered at the next start, by its version's
    mlserve.source_version tag; a server with a ledger of its own optimizes the same source, finds
    that version before registering, and registers nothing. Nothing is registered twice."""
    server = registry.server
    plain = AUTO_TOML.split("rollout = ")[0]
    _register_tiny(server, tmp_path, "autoplain", plain)
    proc = _serve(server, tmp_path, "autoplain", "--poll-interval", "0.3", "--trust-repository")
    try:
        run = wait_finished_run(proc.url, "autoplain", timeout=300)
        assert run["state"] == "published" and run["published_version"] == 2, run
        assert run["deployment"] == {"registered": 2, "alias": "champion"}, run
        assert _alias(server, "autoplain", "champion") == 2 and _alias(server, "autoplain", "challenger") is None
        wait_until(lambda: _states(proc.url, "autoplain") == {"2": ("READY", "")}, timeout=60)
        assert _version_tags(server, "autoplain", 2)["mlserve.toml"] == plain
    finally:
        assert proc.stop() == 0, proc.log()
    [record] = (tmp_path / "cache" / "optimize-runs" / "mlflow").glob("*/autoplain/1.json")
    interrupted = {**json.loads(record.read_text()), "state": "running", "attempts": 1, "published_version": None}
    record.write_text(json.dumps(interrupted))
    again = _serve(server, tmp_path, "autoplain", "--trust-repository")
    try:
        [run] = call(f"{again.url}/admin/models/autoplain/optimize").body["runs"]
        assert (run["state"], run["published_version"]) == ("published", 2), run
        assert run["reason"] == "published before the last stop", run
    finally:
        assert again.stop() == 0, again.log()
    # a server with a ledger of its own (another host) runs version 1 again, finds version 2 registered
    # from it, and registers nothing; no alias moves
    server.set_alias("autoplain", "champion", 1)
    (tmp_path / "other").mkdir()
    other = _serve(server, tmp_path / "other", "autoplain", "--trust-repository")
    try:
        run = wait_finished_run(other.url, "autoplain", timeout=300)
        assert (run["state"], run["published_version"]) == ("published", 2), run
        assert run["deployment"]["alias"] is None and "nothing registered" in run["deployment"]["note"], run
        assert _alias(server, "autoplain", "champion") == 1
    finally:
        assert other.stop() == 0, other.log()
    _, listed = _mlflow_get(server, "model-versions/search?filter=name%3D%27autoplain%27")
    assert sorted(int(v["version"]) for v in listed["model_versions"]) == [1, 2]


def _register_tiny(server: MlflowServer, tmp_path: Path, name: str, toml: str) -> Path:
    """Version 1 of `name` (@champion): the optimize tests' TorchScript MLP in the pytorch flavor, with its
    reference.npz, and `toml` as its mlserve.toml tag; returns the folder logged."""
    source = write_torchscript(tmp_path / "src", name)
    (source / "data").mkdir()
    (source / "model.pt").rename(source / "data" / "model.pth")
    write_data(source / "reference.npz")
    assert server.log_models([{"name": name, "flavor": "pytorch", "folder": str(source),
                               "signature": TINY_SIGNATURE, "alias": "champion"}]) == [1]
    server.set_version_tag(name, 1, "mlserve.toml", toml)
    return source


def _torchscript_reference(path: Path, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.jit.load(str(path))(torch.from_numpy(x)).numpy()


@pytest.mark.timeout(300)
def test_push_registers_a_folder_that_the_store_then_serves(registry, tmp_path):
    """`mlserve push --models mlflow://...`: a folder becomes a new model version (MLflow numbers it),
    --config its mlserve.toml tag, --alias pointed at it; the store reads it back with an MLmodel
    naming the onnx flavor. A link in the folder, and --version, are refused by name."""
    server = registry.server
    source = write_version(tmp_path / "src", "pushed", 1)
    config = tmp_path / "model.toml"
    config.write_text("max_batch_size = 2\n")
    uri = f"mlflow://127.0.0.1:{server.port}"

    def push(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlserve", "push", "--models", uri, "--name", "pushed", *args],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                              timeout=120)

    done = push("--config", str(config), str(source.parent))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "registered pushed version 1" in done.stdout

    async def without_alias() -> None:  # MLflow answers 400 for an alias not set: this model is refused alone
        store = MlflowStore(f"{uri}?models=pushed", tmp_path / "cache")
        try:
            await store.refresh()
            with pytest.raises(ModelLoadError, match="has no @champion alias"):
                await store.read_text("pushed", "model.toml")
        finally:
            await store.close()

    asyncio.run(without_alias())
    done = push("--alias", "champion", str(source.parent))
    assert done.returncode == 0 and "registered pushed version 2 in" in done.stdout, done.stdout + done.stderr
    assert _alias(server, "pushed", "champion") == 2
    assert _version_tags(server, "pushed", 1)["mlserve.toml"] == "max_batch_size = 2\n"
    refused = push("--version", "3", str(source.parent))
    assert refused.returncode == 2 and "MLflow numbers" in refused.stderr
    (source.parent / "linked").symlink_to(source)
    refused = push(str(source.parent))
    assert refused.returncode == 2 and "linked is a symbolic link" in refused.stderr

    async def read_back() -> tuple[str, Path]:
        store = MlflowStore(f"{uri}?models=pushed", tmp_path / "cache")
        try:
            await store.refresh()
            return await store.read_text("pushed", "model.toml"), await store.fetch("pushed", 2)
        finally:
            await store.close()

    text, folder = asyncio.run(read_back())
    assert "max_batch_size = 2" not in text  # version 2 was pushed without --config
    assert (folder / "model.onnx").read_bytes() == source.read_bytes()
    assert version_backend(folder) == "onnx"


def _mlflow_post(server: MlflowServer, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{server.url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.timeout(600)
def test_artifacts_straight_from_s3_with_the_same_rules(registry, tmp_path, moto_server, s3_env):
    """A model version whose source is on S3 (an s3:// artifact root; S3 is moto's server): mlserve
    reads the objects straight from the bucket with the S3 store's verified download, serves the
    champion, and a version with an unsafe object key is refused by name while the first serves on."""
    server = registry.server
    src = tmp_path / "s3src"
    first = write_version(src / "mlflow", "s3model", 1)
    write_version(src / "mlflow", "s3model", 2)
    for version in (1, 2):
        (src / "mlflow" / "s3model" / str(version) / "MLmodel").write_text("flavors:\n  onnx:\n    data: model.onnx\n")
    (src / "mlflow" / "s3model" / "2" / ".hidden").write_text("never read")
    upload(moto_server, "models", "", src, create=True)
    _mlflow_post(server, "registered-models/create", {"name": "s3model"})
    for version in (1, 2):
        created = _mlflow_post(server, "model-versions/create",
                               {"name": "s3model", "source": f"s3://models/mlflow/s3model/{version}"})
        assert created["model_version"]["version"] == str(version)
    server.set_alias("s3model", "champion", 1)
    proc = _serve(server, tmp_path, "s3model", "--s3-endpoint", moto_server, "--poll-interval", "0.3", env=s3_env)
    try:
        assert _states(proc.url, "s3model") == {"1": ("READY", "")}
        status, body = infer(proc.url, "s3model", X)
        assert status == 200 and body["model_version"] == "1", body
        got = np.asarray(body["outputs"][0]["data"], np.float32).reshape(X.shape)
        np.testing.assert_allclose(got, reference(src / "mlflow", "s3model", 1, X), rtol=1e-6)
        assert "fetched s3model version 1" in proc.log()
        server.set_alias("s3model", "champion", 2)
        wait_until(lambda: "unsafe part '.hidden'" in _states(proc.url, "s3model").get("2", ("", ""))[1]
                   or "unsafe part '.hidden'" in _states(proc.url, "s3model").get(None, ("", ""))[1], timeout=60)
        assert _states(proc.url, "s3model")["1"][0] == "READY"
        assert infer(proc.url, "s3model", X)[1]["model_version"] == "1"
    finally:
        assert proc.stop() == 0, proc.log()
    assert first.is_file()


# ---- the parts that need no server ---------------------------------------------------------------


def test_challenger_aliases_make_the_policy_and_the_split():
    mlmodel = parse_mlmodel("flavors: {onnx: {}}\n")
    text, spec = model_toml(3, "[challenger]\nsteps = [10, 100]\ninterval_s = 5\n", mlmodel, "tag", challenger=4)
    config = parse_model_config(tomllib.loads(text))
    assert config.version_policy.specific == (3, 4) and config.traffic.split == ((3, 100.0),)
    assert spec.rollout_body(4) == {"version": "4", "steps": [10.0, 100.0], "interval_s": 5.0,
                                    "max_error_rate_increase": 0.01, "max_p99_ratio": 1.5, "min_requests": 20}
    text, spec = model_toml(3, "[challenger]\nmode = \"split\"\npercent = 20\n[traffic.experiment]\n"
                               "outcome = \"numeric\"\n", mlmodel, "tag", challenger=4)
    config = parse_model_config(tomllib.loads(text))
    assert config.traffic.split == ((3, 80.0), (4, 20.0)) and config.traffic.experiment.outcome == "numeric"
    text, _ = model_toml(3, "", mlmodel, "tag")  # no challenger: the champion alone, 100%
    assert parse_model_config(tomllib.loads(text)).traffic.split == ((3, 100.0),)
    for tag, words in [("[traffic]\nsplit = { \"3\" = 50 }\n", "split is not allowed"),
                       ("[challenger]\nstep = [5]\n", "unknown key(s) step"),
                       ("[challenger]\nmode = \"yolo\"\n", "mode must be one of rollout, split"),
                       ("[challenger]\nsteps = [50, 10]\n", "does not decrease"),
                       ("[traffic]\nbandit = { policy = \"thompson\" }\n", "bandit owns the split")]:
        with pytest.raises(ModelLoadError, match=re.escape(words)):
            model_toml(3, tag, mlmodel, "tag", challenger=4)


def test_the_toml_writer_round_trips_what_tomllib_reads():
    table = {"a b": "quote \" back\\slash\nnewline \u00e9 \U0001f600 \x01", "n": -3, "f": 0.1, "big": 1e300,
             "t": True, "l": [1, 2.5, "x", [True]], "d": {"x.y": {"z": []}}, "inf": float("inf")}
    assert tomllib.loads(to_toml(table)) == table


def test_challenger_alias_setting_is_checked():
    from mlserve.config import load_config

    assert load_config(environ={}).registry.mlflow_challenger_alias == "challenger"
    with pytest.raises(ValueError, match="both 'champion'"):
        load_config(environ={}, overrides={"registry": {"mlflow_challenger_alias": "champion"}})


def test_optimize_rollout_steps_make_the_challenger_plan_and_may_not_be_given_twice():
    """An automatic run's winner is rolled out as @challenger: [optimize] rollout and rollout_interval_s
    become the [challenger] plan, the table's other keys kept; steps, interval or mode given in both
    places are refused by name, as are bad steps."""
    mlmodel = parse_mlmodel("flavors:\n  onnx_model: {}\n")
    tag = "[optimize]\non_new_version = true\nrollout = [10, 100]\nrollout_interval_s = 5\n[challenger]\nmin_requests = 7\n"
    text, spec = model_toml(1, tag, mlmodel, "m version 1", challenger=2)
    assert (spec.mode, spec.steps, spec.interval_s, spec.min_requests) == ("rollout", (10.0, 100.0), 5.0, 7)
    assert tomllib.loads(text)["traffic"]["split"] == {"1": 100.0}
    _, plain = model_toml(1, "[optimize]\non_new_version = true\n", mlmodel, "m version 1", challenger=2)
    assert plain.steps == (5.0, 25.0, 50.0, 100.0)  # no steps in [optimize]: the table's defaults
    for extra, named in (("steps = [1, 2]", "steps"), ("interval_s = 3", "interval_s"), ('mode = "split"', "mode")):
        with pytest.raises(ModelLoadError, match=f"m version 1: .*both say.*{named}|{named}.*both say"):
            model_toml(1, tag + extra + "\n", mlmodel, "m version 1", challenger=2)
    with pytest.raises(ModelLoadError, match="rollout steps must not decrease"):
        model_toml(1, "[optimize]\nrollout = [50, 10]\n", mlmodel, "m version 1")


def test_mlflow_uri_is_parsed_and_unknown_parts_are_refused():
    target = parse_mlflow_uri("mlflows://host:8443/sub/?models=a,b")
    assert (target.base_url, target.models, target.tag) == ("https://host:8443/sub", ("a", "b"), "")
    assert parse_mlflow_uri("mlflow://h:5000?tag=serve=yes").wants("m", {"serve": "yes"})
    assert not parse_mlflow_uri("mlflow://h:5000?tag=serve=yes").wants("m", {"serve": "no"})
    for bad, words in [("mlflow://h?model=a", "unknown query parameter(s) model"),
                       ("mlflow://user:pw@h", "MLFLOW_TRACKING_TOKEN"), ("mlflow://", "not an mlflow")]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_mlflow_uri(bad)


def test_signature_dtypes_map_to_v2_and_unknown_ones_are_refused_by_name():
    text = ("flavors: {{onnx: {{data: model.onnx}}}}\nsignature:\n  inputs: '[{{\"type\": \"tensor\", \"name\": \"x\", "
            "\"tensor-spec\": {{\"dtype\": \"{dtype}\", \"shape\": [-1, 2]}}}}]'\n")
    assert parse_mlmodel(text.format(dtype="float16")).inputs[0].datatype == "FP16"
    assert parse_mlmodel(text.format(dtype="int64")).inputs[0].datatype == "INT64"
    with pytest.raises(ModelLoadError, match="dtype 'complex64' has no v2 datatype"):
        parse_mlmodel(text.format(dtype="complex64"))


def test_model_toml_from_the_alias_version_and_its_tag():
    mlmodel = parse_mlmodel("flavors: {onnx: {}}\nsignature:\n  inputs: '[{\"type\": \"tensor\", \"name\": \"x\", "
                            "\"tensor-spec\": {\"dtype\": \"float32\", \"shape\": [-1, 4]}}]'\n")
    text, _ = model_toml(3, "max_batch_size = 4\n[traffic]\nfallback = \"previous\"\n", mlmodel, "tag")
    from mlserve.spec import parse_model_config
    import tomllib

    config = parse_model_config(tomllib.loads(text))
    assert config.version_policy.specific == (3,)
    assert [(s.name, s.datatype, s.shape) for s in config.inputs] == [("x", "FP32", (-1, 4))]
    assert config.batching.max_batch_size == 4
    with pytest.raises(ModelLoadError, match="version_policy is not allowed"):
        model_toml(3, "version_policy = { latest = 1 }", mlmodel, "tag")


def test_token_from_mlflow_tracking_token_and_the_alias_is_checked():
    from mlserve.config import load_config

    assert load_config(environ={"MLFLOW_TRACKING_TOKEN": "t0k"}).registry.mlflow_token == "t0k"
    both = {"MLFLOW_TRACKING_TOKEN": "t0k", "MLSERVE_REGISTRY_MLFLOW_TOKEN": "mine"}
    assert load_config(environ=both).registry.mlflow_token == "mine"
    with pytest.raises(ValueError, match="mlflow_alias"):
        load_config(environ={}, overrides={"registry": {"mlflow_alias": "no spaces"}})


def test_flavor_files_move_beside_mlmodel_and_pt2_is_torch_export(tmp_path):
    from mlserve.engine.base import version_backend
    from mlserve.registry.mlflow import flatten_flavor

    folder = tmp_path / "v"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "model.pt2").write_bytes(b"pt2")
    (folder / "MLmodel").write_text("flavors: {pytorch: {model_data: data}, python_function: {}}\n")
    flatten_flavor(folder, parse_mlmodel((folder / "MLmodel").read_text()))
    assert (folder / "model.pt2").read_bytes() == b"pt2"
    assert version_backend(folder) == "torch_export"
    (folder / "model.pt2").unlink()
    assert version_backend(folder) == "torchscript"
    (folder / "MLmodel").write_text("flavors: {sentence_transformers: {}}\n")
    (folder / "model.sentence_transformer").mkdir()
    (folder / "model.sentence_transformer" / "modules.json").write_text("[]")
    flatten_flavor(folder, parse_mlmodel((folder / "MLmodel").read_text()))
    assert (folder / "modules.json").is_file() and version_backend(folder) == "embedding"
    (folder / "MLmodel").write_text("flavors: {sklearn: {}, python_function: {}}\n")
    with pytest.raises(ModelLoadError, match="MLflow flavor sklearn cannot be served"):
        version_backend(folder)


def test_only_artifact_proxy_locations_are_read():
    assert proxy_path("mlflow-artifacts:/1/abc/artifacts/model") == "1/abc/artifacts/model"
    assert proxy_path("mlflow-artifacts://h:5000/1/x") == "1/x"
    with pytest.raises(ModelLoadError, match="artifact proxy"):
        proxy_path("s3://bucket/1/x")
    with pytest.raises(ModelLoadError, match="unsafe part"):
        proxy_path("mlflow-artifacts:/1/../etc")


def test_a_write_to_an_unreachable_tracking_server_names_the_call(tmp_path):
    """What the follower logs and notes in the rollout's history when MLflow is away."""
    from mlserve.registry.store import StoreError
    from tests.server_process import free_port

    store = MlflowStore(f"mlflow://127.0.0.1:{free_port()}", tmp_path)

    async def write() -> None:
        try:
            await store.delete_alias("m", "challenger")
        finally:
            await store.close()

    with pytest.raises(StoreError, match=r"DELETE registered-models/alias failed: ClientConnectorError"):
        asyncio.run(write())
