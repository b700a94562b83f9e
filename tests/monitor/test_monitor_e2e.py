"""End to end: a real mlserve process with drift and the prediction log on; /metrics read with
prometheus_client's parser, the drift view over HTTP, traffic sent with tritonclient."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.monitor.traffic import client, exported_names, get_json, infer, scrape
from tests.server_process import MlserveProcess

CORE_FAMILIES = (
    "mlserve_requests_total",
    "mlserve_request_duration_seconds_bucket",
    "mlserve_queue_duration_seconds_bucket",
    "mlserve_compute_duration_seconds_bucket",
    "mlserve_batch_size_bucket",
    "mlserve_batch_requests_bucket",
    "mlserve_queue_depth",
    "mlserve_queue_capacity",
    "mlserve_in_flight_requests",
    "mlserve_model_ready",
    "mlserve_model_state",
    "mlserve_model_load_duration_seconds",
    "mlserve_model_load_failures_total",
    "mlserve_process_cpu_seconds_total",
    "mlserve_process_resident_memory_bytes",
    "mlserve_drift_psi",
    "mlserve_drift_ks_statistic",
    "mlserve_drift_ks_pvalue",
    "mlserve_drift_status",
    "mlserve_drift_window_rows",
    "mlserve_drift_dropped_observations_total",
    "mlserve_prediction_log_records_total",
    "mlserve_prediction_log_dropped_total",
    "mlserve_prediction_log_queue_depth",
)


def _wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _drift(mserver, model: str = "drifty", version: str | None = None) -> tuple[int, dict]:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/drift"
    return get_json(mserver.url + path)


def _drifty_rows(rng, rows: int, shift: float = 0.0) -> np.ndarray:
    x = rng.standard_normal((rows, 4)).astype(np.float32)
    x[:, 2] += shift
    return x


def test_metrics_parse_and_export_every_family_after_a_mixed_workload(mserver):
    c = client(mserver)
    rng = np.random.default_rng(0)
    for version in ("1", "2"):
        infer(c, "mlp", rng.standard_normal((3, 768)).astype(np.float32), model_version=version)
    infer(c, "drifty", _drifty_rows(rng, 8))
    with pytest.raises(InferenceServerException):
        infer(c, "mlp", rng.standard_normal((3, 5)).astype(np.float32))
    with pytest.raises(InferenceServerException):
        infer(c, "no_such_model", rng.standard_normal((1, 4)).astype(np.float32))
    names = exported_names(mserver.url)
    missing = [n for n in CORE_FAMILIES if n not in names]
    assert not missing, missing
    families = scrape(mserver.url)
    codes = {s.labels["code"] for s in families["mlserve_requests"]}
    assert {"200", "400", "404"} <= codes
    state = {(s.labels["model"], s.labels["version"]): s.value for s in families["mlserve_model_state"]
             if s.labels["state"] == "READY"}
    assert state[("mlp", "1")] == 1 and state[("drifty", "1")] == 1


def _series(families: dict) -> set[tuple]:
    return {(s.name, tuple(sorted(s.labels.items()))) for samples in families.values() for s in samples}


def test_label_sets_stay_bounded_under_thousands_of_user_keys(mserver):
    local = threading.local()
    x = np.zeros((1, 4), dtype=np.float32)

    def one(i: int) -> None:
        # tritonclient.http clients are gevent-based: one per thread.
        c = local.c = getattr(local, "c", None) or client(mserver)
        headers = {"X-User-Id": f"user-{i}", "X-Request-Id": f"req-{i}"}
        infer(c, "drifty", x, request_id=f"id-{i}", headers=headers)
        try:
            infer(c, f"unknown-model-{i}", x, headers=headers)
        except InferenceServerException:
            pass

    one(-1)
    before = _series(scrape(mserver.url))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(2000)))
    after = _series(scrape(mserver.url))
    grown = {s for s in after - before if not s[0].startswith("mlserve_drift_")}
    assert not grown, sorted(grown)[:10]
    values = {v for _, labels in after for _, v in labels}
    assert not any(v.startswith(("user-", "req-", "id-", "unknown-model-")) for v in values)


def test_only_the_shifted_feature_crosses_the_alert_threshold(mserver):
    c = client(mserver, concurrency=4)
    rng = np.random.default_rng(1)
    for _ in range(25):
        infer(c, "drifty", _drifty_rows(rng, 20))
    report = _wait_for(lambda: (r := _drift(mserver)[1])["status"] == "ok" and r["window_rows"] >= 380 and r)
    assert report["reference"] == {"source": "reference.npz", "rows": 5000}
    assert {f["name"] for f in report["features"]} == {"x[0]", "x[1]", "x[2]", "x[3]"}
    for _ in range(25):
        infer(c, "drifty", _drifty_rows(rng, 20, shift=1.5))
    report = _wait_for(lambda: (r := _drift(mserver, version="1")[1])["status"] == "alert" and r)
    alerting = {f["name"] for f in report["features"] if f["status"] == "alert"}
    assert alerting == {"x[2]"}
    assert report["top_drifting"][0] == "x[2]"
    shifted = next(f for f in report["features"] if f["name"] == "x[2]")
    assert shifted["psi"] >= 0.25 and shifted["ks_statistic"] > 0.3 and shifted["ks_pvalue"] < 1e-6
    families = scrape(mserver.url)
    status = {s.labels["status"]: s.value for s in families["mlserve_drift_status"] if s.labels["model"] == "drifty"}
    assert status["alert"] == 1 and status["ok"] == 0
    psi = {s.labels["feature"]: s.value for s in families["mlserve_drift_psi"] if s.labels["model"] == "drifty"}
    assert psi["x[2]"] >= 0.25 and max(v for k, v in psi.items() if k != "x[2]") < 0.25
    log_lines = [json.loads(line) for line in mserver.log().splitlines() if line.strip()]
    assert any(line["logger"] == "mlserve.drift" and "drift alert" in line["message"] for line in log_lines)


def test_drift_view_errors(mserver):
    status, body = _drift(mserver, "nodrift")
    assert status == 404 and "no drift statistics" in body["error"]
    status, body = _drift(mserver, "no_such_model")
    assert status == 404 and "no_such_model" in body["error"]
    status, body = _drift(mserver, "drifty", "7")
    assert status == 404 and "version" in body["error"]


def test_prediction_log_records_answered_requests(mserver):
    c = client(mserver)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    infer(c, "drifty", x, request_id="logged-once")
    path = mserver.predlog / "predictions.jsonl"
    line = _wait_for(lambda: next((json.loads(s) for s in path.read_text().splitlines() if '"logged-once"' in s), None))
    assert line["model"] == "drifty" and line["version"] == "1" and line["routed_by"] == "router"
    assert line["outputs"] == {"y": x.tolist()}
    assert line["inputs"]["x"].startswith("sha256:") and line["latency_s"] > 0


def test_prediction_log_keeps_every_sampled_request_after_sigterm(lean_monitor_repo, tmp_path):
    predlog = tmp_path / "predlog"
    proc = MlserveProcess(
        lean_monitor_repo, "--prediction-log", str(predlog), "--log-sample-rate", "1", log_path=tmp_path / "mlserve.log"
    ).wait_ready()
    answered: list[str] = []
    stop_at = time.monotonic() + 30

    def hammer(worker: int) -> None:
        c = client(proc)
        x = np.random.default_rng(worker).standard_normal((4, 768)).astype(np.float32)
        i = 0
        while time.monotonic() < stop_at:
            req_id = f"w{worker}-{i}"
            try:
                infer(c, "mlp", x, request_id=req_id)
            except Exception:
                return
            answered.append(req_id)
            i += 1

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(hammer, w) for w in range(8)]
        _wait_for(lambda: len(answered) >= 200, timeout=30)
        proc.signal(15)
        assert proc.proc.wait(60) == 0, proc.log()
        for f in futures:
            f.result()
    proc.stop()
    logged = {json.loads(line)["id"] for path in predlog.glob("*.jsonl") for line in path.read_text().splitlines()}
    missing = set(answered) - logged
    assert not missing, f"{len(missing)} of {len(answered)} answered requests missing, e.g. {sorted(missing)[:5]}"
