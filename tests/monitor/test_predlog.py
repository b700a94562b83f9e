"""The prediction log's writer: JSON lines, rotation by size, drops counted on a full queue or disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mlserve.monitor.metrics import Metrics
from mlserve.monitor.predlog import FILE_NAME, PredictionLog, PredictionLogSettings, PredictionRecord


def _record(i: int) -> PredictionRecord:
    x = np.full((1, 4), i, dtype=np.float32)
    return PredictionRecord(f"r{i}", 1.0e9 + i, "m", "1", "latest", 0.001, {"x": x}, {"y": x * 2})


def _counter(metrics: Metrics, name: str, labels: dict | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def _lines(directory: Path) -> list[dict]:
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


def test_records_are_json_lines_with_hashed_or_full_inputs(tmp_path):
    for mode in ("hash", "full"):
        metrics = Metrics()
        plog = PredictionLog(PredictionLogSettings(tmp_path / mode, 1.0, mode), metrics)
        plog.start()
        for i in range(5):
            plog.record(_record(i))
        plog.close()
        lines = _lines(tmp_path / mode)
        assert [r["id"] for r in lines] == [f"r{i}" for i in range(5)]
        first = lines[1]
        assert first["model"] == "m" and first["version"] == "1" and first["routed_by"] == "latest"
        assert first["outputs"] == {"y": [[2.0] * 4]}
        if mode == "full":
            assert first["inputs"] == {"x": [[1.0] * 4]}
        else:
            x = np.full((1, 4), 1, dtype=np.float32)
            digest = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode() + x.tobytes()).hexdigest()
            assert first["inputs"] == {"x": f"sha256:{digest}"}
        assert _counter(metrics, "mlserve_prediction_log_records_total") == 5


def test_rotates_by_size_and_keeps_max_files(tmp_path):
    metrics = Metrics()
    plog = PredictionLog(PredictionLogSettings(tmp_path, 1.0, "full", max_bytes=2048, max_files=3), metrics)
    plog.start()
    for i in range(200):
        plog.record(_record(i))
    plog.close()
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) == 3 and (tmp_path / FILE_NAME) in files
    assert all(f.stat().st_size <= 2048 for f in files)
    ids = [int(r["id"][1:]) for r in _lines(tmp_path)]
    # The newest records survive, in order, in the rotated files and the current one.
    current = [int(r["id"][1:]) for r in _lines_of(tmp_path / FILE_NAME)]
    assert current[-1] == 199 and current == list(range(current[0], 200))
    assert len(ids) == len(set(ids)) and max(ids) == 199
    assert _counter(metrics, "mlserve_prediction_log_records_total") == 200


def _lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_full_queue_drops_and_counts_without_blocking(tmp_path):
    metrics = Metrics()
    plog = PredictionLog(PredictionLogSettings(tmp_path, 1.0, queue_size=2), metrics)
    for i in range(5):  # the writer is not running yet: the queue fills
        plog.record(_record(i))
    assert _counter(metrics, "mlserve_prediction_log_dropped_total", {"reason": "queue_full"}) == 3
    plog.start()
    plog.close()
    assert [r["id"] for r in _lines(tmp_path)] == ["r0", "r1"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to stand in for a full disk")
def test_full_disk_drops_and_counts(tmp_path):
    (tmp_path / FILE_NAME).symlink_to("/dev/full")
    metrics = Metrics()
    plog = PredictionLog(PredictionLogSettings(tmp_path, 1.0), metrics)
    plog.start()
    for i in range(3):
        plog.record(_record(i))
    plog.close()
    assert _counter(metrics, "mlserve_prediction_log_dropped_total", {"reason": "write_error"}) == 3
    assert _counter(metrics, "mlserve_prediction_log_records_total") == 0
