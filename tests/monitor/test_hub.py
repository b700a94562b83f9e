"""The monitor's request-path side: never blocks, drops and counts when its queue is full."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from mlserve.config import MonitorConfig
from mlserve.monitor.hub import Monitor, Observation
from mlserve.monitor.metrics import Metrics
from mlserve.spec import DriftSettings
from tests.server_process import ROOT


def _obs(i: int) -> Observation:
    x = np.full((1, 3), i, dtype=np.float32)
    return Observation("m", "1", f"r{i}", {"x": x}, {"y": x}, 0.001, "latest")


def test_full_drift_queue_drops_and_counts(tmp_path):
    metrics = Metrics()
    monitor = Monitor(MonitorConfig(drift_queue=4), metrics)
    monitor.add_version("m", "1", tmp_path, DriftSettings(reference_rows=5, min_rows=1, window=10), ("y",))
    for i in range(10):  # the worker is not started: nothing drains
        monitor.observe(_obs(i))
    labels = {"model": "m", "version": "1"}
    dropped = metrics.registry.get_sample_value("mlserve_drift_dropped_observations_total", labels)
    assert dropped == 6
    monitor.start()
    monitor.close()  # drains what was queued
    assert monitor.drift("m", "1").report().reference_source == "collecting the first 5 rows served"
    assert monitor.drift("m", "1").report().reference_rows == 4


def test_bad_reference_leaves_the_version_without_drift(tmp_path):
    (tmp_path / "reference.npz").write_bytes(b"not an npz file")
    monitor = Monitor(MonitorConfig(), Metrics())
    monitor.add_version("m", "1", tmp_path, DriftSettings(), ("y",))
    assert monitor.drift("m", "1") is None
    monitor.add_version("m", "2", tmp_path, DriftSettings(enabled=False), ("y",))
    assert monitor.drift("m", "2") is None


def test_bad_monitor_flags_are_refused_before_serving(tmp_path):
    for flags, message in (
        (["--log-sample-rate", "2"], "log_sample_rate must be in 0..1"),
        (["--log-format", "xml"], "invalid choice"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "mlserve", "start", "--models", str(tmp_path), *flags],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_drift_is_fed_a_capped_sample_of_requests(tmp_path):
    """drift_sample_per_s = 100: a burst of one second's worth passes whole, then about 100 a second;
    what is left out is not counted as dropped."""
    import time

    metrics = Metrics()
    monitor = Monitor(MonitorConfig(drift_sample_per_s=100, drift_queue=10_000), metrics)
    monitor.add_version("m", "1", tmp_path, DriftSettings(reference_rows=10_000, min_rows=1, window=1000), ("y",))
    started = time.monotonic()
    for i in range(300):  # the worker is not started: nothing drains
        monitor.observe(_obs(i))
    elapsed = time.monotonic() - started
    monitor.start()
    monitor.close()
    taken = monitor.drift("m", "1").report().reference_rows
    assert 100 <= taken <= 100 + elapsed * 100 + 1 and taken < 300, (taken, elapsed)
    labels = {"model": "m", "version": "1"}
    assert not metrics.registry.get_sample_value("mlserve_drift_dropped_observations_total", labels)


def test_a_reference_path_must_stay_inside_the_version_folder(tmp_path):
    """Absolute paths and `..` are refused when model.toml is read, naming the key; a link that leads
    out of the folder is refused when the version loads (it serves, without drift statistics)."""
    import pytest

    for bad in ("/etc/passwd", "../other/reference.npz", "data/../../x.npz", "..", "", "C:/x.npz", "..\\x.npz"):
        with pytest.raises(ValueError, match=r"\[drift\] reference"):
            DriftSettings.parse({"reference": bad})
    assert DriftSettings.parse({"reference": "data/ref.npz"}).reference == "data/ref.npz"

    reference = np.random.default_rng(0).standard_normal((200, 3)).astype(np.float32)
    outside = tmp_path / "outside"
    outside.mkdir()
    np.savez(outside / "secret.npz", x=reference)
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "reference.npz").symlink_to(outside / "secret.npz")
    monitor = Monitor(MonitorConfig(), Metrics())
    monitor.add_version("m", "1", version, DriftSettings(reference_rows=5), ("y",))
    assert monitor.drift("m", "1") is None  # the old code read the file the link points to

    np.savez(version / "inside.npz", x=reference)
    (version / "linked.npz").symlink_to(version / "inside.npz")
    monitor.add_version("m", "2", version, DriftSettings(reference="linked.npz"), ("y",))
    assert monitor.drift("m", "2").report().reference_source == "linked.npz"
