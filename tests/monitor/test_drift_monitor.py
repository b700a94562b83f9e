"""A DriftMonitor over several features: windows, statuses, reference from served rows."""

from __future__ import annotations

import numpy as np

from mlserve.monitor import features
from mlserve.monitor.drift import DriftMonitor, build_reference
from mlserve.spec import DriftSettings

COLUMNS = 5


def _batch(rng, rows: int, shift_column: int | None = None, shift: float = 1.0) -> dict[str, np.ndarray]:
    x = rng.standard_normal((rows, COLUMNS)).astype(np.float32)
    if shift_column is not None:
        x[:, shift_column] += shift
    logits = x[:, :3] * np.array([1.0, 0.5, 0.2], dtype=np.float32)
    return features.extract({"x": x}, {"y": logits}, max_columns=32)


def _monitor(rng, settings: DriftSettings, clock=None) -> DriftMonitor:
    reference = _batch(rng, 5000)
    kwargs = {"clock": clock} if clock else {}
    return DriftMonitor("m", "1", settings, build_reference(reference, settings, "reference.npz"), **kwargs)


def test_features_per_column_summaries_and_classes():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = features.extract({"x": x, "s": np.array([b"a"] * 3, dtype=object)}, {"y": x}, max_columns=2)
    assert sorted(got) == ["x.mean", "x.norm", "x.std", "y.class", "y.mean", "y.norm", "y.std"]
    np.testing.assert_allclose(got["x.norm"], np.linalg.norm(x, axis=1))
    np.testing.assert_array_equal(got["y.class"], [3, 3, 3])
    assert sorted(features.extract({"x": x}, {}, max_columns=4)) == ["x[0]", "x[1]", "x[2]", "x[3]"]


def test_only_the_shifted_feature_alerts_within_the_window():
    rng = np.random.default_rng(0)
    settings = DriftSettings(window=2000, min_rows=200)
    monitor = _monitor(rng, settings)
    for _ in range(20):
        monitor.update(_batch(rng, 100))
    monitor.refresh()
    assert monitor.report().status == "ok"
    assert all(f.status == "ok" for f in monitor.report().features)
    # x[3] feeds no output, so only it may move.
    for _ in range(20):
        monitor.update(_batch(rng, 100, shift_column=3))
    monitor.refresh()
    report = monitor.report()
    alerting = [f.name for f in report.features if f.status == "alert"]
    assert alerting == ["x[3]"]
    assert report.status == "alert" and report.top[0] == "x[3]"
    assert all(f.psi < settings.psi_warn for f in report.features if f.name != "x[3]")


def test_count_window_forgets_old_traffic():
    rng = np.random.default_rng(1)
    monitor = _monitor(rng, DriftSettings(window=1000, min_rows=100))
    for _ in range(10):
        monitor.update(_batch(rng, 100, shift_column=0))
    monitor.refresh()
    assert monitor.report().status == "alert"
    for _ in range(12):
        monitor.update(_batch(rng, 100))
    monitor.refresh()
    report = monitor.report()
    assert report.status == "ok", [f for f in report.features if f.status != "ok"]
    assert 900 <= report.window_rows <= 1000
    monitor.update(_batch(rng, 1234))
    monitor.refresh()
    assert 900 <= monitor.report().window_rows <= 1000


def test_time_window_ages_out_without_traffic():
    now = [0.0]
    rng = np.random.default_rng(2)
    monitor = _monitor(rng, DriftSettings(window_s=10.0, min_rows=100), clock=lambda: now[0])
    for _ in range(10):
        monitor.update(_batch(rng, 100, shift_column=1))
        now[0] += 0.5
    monitor.refresh()
    assert monitor.report().status == "alert"
    now[0] += 20.0
    monitor.refresh()
    assert monitor.report().window_rows == 0
    assert monitor.report().status == "collecting"


def test_reference_from_the_first_rows_served():
    rng = np.random.default_rng(3)
    settings = DriftSettings(reference_rows=1000, min_rows=100, window=1000)
    monitor = DriftMonitor("m", "1", settings, None)
    for _ in range(10):
        monitor.update(_batch(rng, 100))
    assert monitor.reference is not None and monitor.reference.num_rows == 1000
    assert monitor.reference.source == "first 1000 rows served"
    for _ in range(10):
        monitor.update(_batch(rng, 100, shift_column=2, shift=2.0))
    monitor.refresh()
    assert monitor.report().top[0] == "x[2]"
    assert monitor.report().status == "alert"


def test_output_class_frequencies_drift():
    rng = np.random.default_rng(4)
    monitor = _monitor(rng, DriftSettings(window=2000, min_rows=100))
    for _ in range(20):
        batch = _batch(rng, 100)
        batch["y.class"] = np.zeros(100)  # every row now predicts class 0
        monitor.update(batch)
    monitor.refresh()
    statuses = {f.name: f.status for f in monitor.report().features}
    assert statuses["y.class"] == "alert"


def test_a_chunk_larger_than_the_window_leaves_only_its_last_rows():
    rng = np.random.default_rng(5)
    monitor = _monitor(rng, DriftSettings(window=1000, min_rows=100))
    shifted = _batch(rng, 3000, shift_column=0)
    monitor.update({k: np.concatenate([v, w]) for (k, v), w in zip(shifted.items(), _batch(rng, 1000).values())})
    monitor.refresh()
    report = monitor.report()
    assert report.window_rows == 1000
    assert report.status == "ok", [f for f in report.features if f.status != "ok"]


def test_a_full_window_smaller_than_min_rows_is_still_judged():
    rng = np.random.default_rng(6)
    monitor = _monitor(rng, DriftSettings(window=500))  # min_rows defaults to 1000
    for _ in range(30):
        monitor.update(_batch(rng, 50, shift_column=4))
    monitor.refresh()
    assert 450 <= monitor.report().window_rows <= 500
    assert monitor.report().status == "alert"
