"""GET /status and `mlserve status` against a real server: what the page shows, checked against the
traffic the test sent, the reference it wrote, and the server's own admin views."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import numpy as np

from mlserve.config import AuthConfig
from mlserve.server.auth import Access, PathPolicy
from tests.server_process import ROOT, free_port
from tests.ui.traffic import SHIFTED_COLUMN, call, model, version, wait_for


def status_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlserve", "status", *args], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, timeout=60)


def _shadowed(overview: dict) -> int:
    """Copies of version 1's answers that version 2 received: compared or dropped."""
    shadow = model(overview, "mlp")["traffic"]["shadow"]
    return shadow["compared"] + shadow["dropped"]


def test_overview_shows_split_experiment_history_and_llm(ui_server, driven):
    sent = sum(driven.mlp_by_version.values())

    def settled(o):  # every mlp request has left the history's window into its points
        counted = sum(sum(version(o, "mlp", v)["series"]["requests"]) for v in ("1", "2")
                      if version(o, "mlp", v)["series"])
        llm = version(o, "tiny-gpt2", "1")["series"]
        return counted == sent and llm is not None and any(t is not None for t in llm["ttft_p50_s"])

    overview = wait_for(settled, ui_server.url)
    assert overview["access"] == {"auth": False, "admin": True, "key": None}
    assert overview["server"]["ready"] is True and overview["server"]["interval_s"] == 0.5
    assert [m["name"] for m in overview["models"]] == ["drifty", "mlp", "tiny-gpt2"]
    mlp = model(overview, "mlp")
    assert mlp["traffic"]["split"] == {"1": 50.0, "2": 50.0}
    assert [v["weight"] for v in mlp["versions"]] == [0.5, 0.5]
    for v in ("1", "2"):
        row = version(overview, "mlp", v)
        assert row["state"] == "READY" and row["load_s"] > 0
        assert sum(row["series"]["requests"]) == driven.mlp_by_version.get(v, 0)
        assert mlp["experiment"]["versions"][v]["requests"] == driven.mlp_by_version.get(v, 0)
    # outcome 1 for version 2 only: the means are exactly 0 and 1
    assert mlp["experiment"]["versions"]["1"]["mean"] == 0.0 and mlp["experiment"]["versions"]["2"]["mean"] == 1.0
    assert mlp["experiment"]["versions"]["2"]["decision"] in ("continue", "treatment_better")
    shadow = wait_for(lambda o: _shadowed(o) == driven.mlp_by_version.get("1", 0), ui_server.url)
    assert model(shadow, "mlp")["traffic"]["shadow"]["failed"] == 0
    _, traffic, _ = call(f"{ui_server.url}/admin/models/mlp/traffic")
    assert model(shadow, "mlp")["traffic"] == traffic  # the same view the admin API gives
    llm = model(overview, "tiny-gpt2")
    assert llm["kind"] == "llm"
    points = llm["versions"][0]["series"]
    assert max(points["kv_total"]) > 0 and sum(points["requests"]) == 1


def test_drift_alert_names_the_shifted_column_and_its_histogram_matches_numpy(ui_server, driven, tmp_path):
    overview = wait_for(lambda o: version(o, "drifty", "1")["drift"]["status"] == "alert", ui_server.url)
    drift = version(overview, "drifty", "1")["drift"]
    alerting = {f["name"] for f in drift["worst"] if f["status"] == "alert"}
    assert f"x[{SHIFTED_COLUMN}]" in alerting
    assert not alerting & {f"x[{c}]" for c in range(4) if c != SHIFTED_COLUMN}
    assert drift["window_rows"] == len(driven.drifty_x)
    feature = f"x[{SHIFTED_COLUMN}]"
    status, hist, _ = call(f"{ui_server.url}/status/models/drifty/versions/1/histogram?feature={feature}")
    assert status == 200, hist
    bins = np.concatenate([[-np.inf], hist["edges"], [np.inf]])
    assert hist["live"] == np.histogram(driven.drifty_x[:, SHIFTED_COLUMN], bins=bins)[0].tolist()
    reference = np.random.default_rng(7).standard_normal((2000, 4)).astype(np.float32)  # as conftest wrote it
    assert hist["reference"] == np.histogram(reference[:, SHIFTED_COLUMN], bins=bins)[0].tolist()
    status, body, _ = call(f"{ui_server.url}/status/models/drifty/versions/1/histogram?feature=x[2]&bins=3")
    assert status == 400 and "bins" in body["error"]
    status, body, _ = call(f"{ui_server.url}/status/models/drifty/versions/1/histogram?feature=nope")
    assert status == 404 and "nope" in body["error"]


def test_cli_prints_the_same_overview(ui_server, driven):
    wait_for(lambda o: version(o, "drifty", "1")["drift"]["status"] == "alert", ui_server.url)
    done = status_cli("--url", ui_server.url)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "mlp  serving v" in out and "drifty  serving v1" in out and "tiny-gpt2  serving v1  [LLM]" in out
    assert "split: v1 50% / v2 50% (set by model.toml)" in out
    assert "drift v1: alert" in out and f"x[{SHIFTED_COLUMN}] PSI" in out
    assert "experiment (binary, control v" in out and "KV cache" in out
    as_json = status_cli("--url", ui_server.url, "--json")
    assert [m["name"] for m in json.loads(as_json.stdout)["models"]] == ["drifty", "mlp", "tiny-gpt2"]
    gone = status_cli("--url", f"http://127.0.0.1:{free_port()}")
    assert gone.returncode == 1 and "cannot reach" in gone.stderr


def test_page_files_are_open_and_data_needs_a_key(auth_server):
    assert PathPolicy(True, True).access("/") is Access.OPEN
    assert PathPolicy(True, True).access("/ui/{name}") is Access.OPEN
    assert PathPolicy.from_config(AuthConfig(), "127.0.0.1").access("/status") is Access.INFER
    url, tokens = auth_server.url, auth_server.tokens
    for path in ("/", "/ui/app.js", "/ui/style.css"):
        with urllib.request.urlopen(url + path, timeout=10) as resp:
            assert resp.status == 200 and "default-src 'self'" in resp.headers["Content-Security-Policy"]
    assert call(f"{url}/ui/session")[1] == {"auth": True}
    assert call(f"{url}/ui/../status")[0] in (401, 404)
    status, body, headers = call(f"{url}/status")
    assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
    assert call(f"{url}/status", token=tokens["reader"])[1]["access"] == {"auth": True, "admin": False, "key": "reader"}
    assert call(f"{url}/status", token=tokens["ops"])[1]["access"] == {"auth": True, "admin": True, "key": "ops"}
    assert call(f"{url}/status/models/drifty/versions/1/histogram?feature=x[0]")[0] == 401
    refused = status_cli("--url", url)
    assert refused.returncode == 1 and "401" in refused.stderr
    done = status_cli("--url", url, "--key", tokens["reader"])
    assert done.returncode == 0 and "mlp  serving v" in done.stdout, done.stderr
