"""The reference vs live histogram of one feature, checked against numpy's own histogram over the
edges it reports."""

from __future__ import annotations

import numpy as np

from mlserve.monitor.drift import DriftMonitor, build_reference
from mlserve.spec import DriftSettings


def _counts(values: np.ndarray, edges: tuple[float, ...]) -> list[int]:
    bins = np.concatenate([[-np.inf], edges, [np.inf]])
    return np.histogram(values, bins=bins)[0].tolist()


def test_histogram_matches_numpy_over_its_edges_and_shows_the_shift():
    rng = np.random.default_rng(11)
    settings = DriftSettings(window=3000, min_rows=100, bins=10)
    reference = {"a": rng.standard_normal(4000), "b": rng.standard_normal(4000)}
    monitor = DriftMonitor("m", "1", settings, build_reference(reference, settings, "reference.npz"))
    assert monitor.histogram("a").live == (0,) * len(monitor.histogram("a").reference)

    live_a = rng.standard_normal(2000) + 1.5
    monitor.update({"a": live_a, "b": rng.standard_normal(2000)})
    hist = monitor.histogram("a")
    assert len(hist.edges) + 1 == len(hist.reference) == len(hist.live)
    assert 8 <= len(hist.reference) <= 11  # about `bins` groups of equal reference mass
    assert list(hist.edges) == sorted(hist.edges)
    assert list(hist.reference) == _counts(reference["a"], hist.edges)
    assert list(hist.live) == _counts(live_a, hist.edges)
    # the shift moves live mass into the top groups
    assert sum(hist.live[-3:]) / 2000 > 0.6 > sum(hist.reference[-3:]) / 4000
    assert monitor.histogram("nope") is None
