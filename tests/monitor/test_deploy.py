"""deploy/: the alert rules pass promtool, every metric the dashboard and rules query is exported,
and a real Prometheus scraping a live mlserve fires the drift alert when the inputs shift."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.monitor.traffic import client, exported_names, infer
from tests.server_process import ROOT, MlserveProcess, free_port

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "mlserve.json"
METRIC = re.compile(r"\bmlserve_[a-z0-9_]+\b")
NO_PROMTOOL = "promtool not installed (Debian package `prometheus`; `make test` installs it when run as root)"
NO_PROMETHEUS = "prometheus not installed (Debian package `prometheus`; `make test` installs it when run as root)"


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    return exprs


@pytest.mark.skipif(shutil.which("promtool") is None, reason=NO_PROMTOOL)
def test_promtool_accepts_the_rules():
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_queried_metric_is_exported(mserver):
    queried = {name for expr in _rule_exprs() + _dashboard_exprs() for name in METRIC.findall(expr)}
    assert len(queried) >= 15
    exported = exported_names(mserver.url)
    assert not sorted(queried - exported), sorted(queried - exported)


def test_dashboard_covers_the_panels_operators_need():
    titles = " ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
    for word in ("latency", "throughput", "errors", "batch", "queue", "drift", "kv cache", "breaker"):
        assert word in titles


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _test_rules(tmp: Path) -> Path:
    """The shipped rules with every `for:` set to 0 so the test need not wait minutes."""
    text = re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", RULES.read_text())
    path = tmp / "alerts.yml"
    path.write_text(text)
    return path


def _start_prometheus(tmp: Path, target_port: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(_test_rules(tmp))],
        "scrape_configs": [{"job_name": "mlserve", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp / "prometheus.log", "wb")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    return proc, f"http://127.0.0.1:{port}"


def _firing(prom_url: str, alert: str, model: str) -> bool:
    alerts = _get(f"{prom_url}/api/v1/alerts")["data"]["alerts"]
    return any(
        a["labels"].get("alertname") == alert and a["labels"].get("model") == model and a["state"] == "firing"
        for a in alerts
    )


def _poll(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


@pytest.mark.skipif(shutil.which("prometheus") is None, reason=NO_PROMETHEUS)
def test_real_prometheus_fires_the_drift_alert(lean_monitor_repo, tmp_path):
    server = MlserveProcess(lean_monitor_repo, log_path=tmp_path / "mlserve.log").wait_ready()
    prom, prom_url = _start_prometheus(tmp_path, server.port)
    try:
        def scraping() -> bool:
            return any(t["health"] == "up" for t in _get(f"{prom_url}/api/v1/targets")["data"]["activeTargets"])

        assert _poll(scraping, 30), (tmp_path / "prometheus.log").read_text()
        assert _poll(lambda: _get(f"{prom_url}/api/v1/rules")["data"]["groups"], 10)
        c = client(server)
        rng = np.random.default_rng(5)
        for _ in range(25):
            infer(c, "drifty", rng.standard_normal((20, 4)).astype(np.float32))
        query = f'{prom_url}/api/v1/query?query=mlserve_drift_status%7Bmodel%3D%22drifty%22%2Cstatus%3D%22ok%22%7D'
        assert _poll(lambda: [r for r in _get(query)["data"]["result"] if r["value"][1] == "1"], 20)
        time.sleep(2.5)  # two more evaluations on unshifted traffic
        assert not _firing(prom_url, "MlserveDriftAlert", "drifty")
        for _ in range(25):
            x = rng.standard_normal((20, 4)).astype(np.float32)
            x[:, 0] += 2.0
            infer(c, "drifty", x)
        assert _poll(lambda: _firing(prom_url, "MlserveDriftAlert", "drifty"), 30), _get(f"{prom_url}/api/v1/alerts")
    finally:
        prom.terminate()
        prom.wait(30)
        assert server.stop() == 0, server.log()
