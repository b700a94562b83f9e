"""PSI and KS from frozen-edge histograms, checked against hand computations and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from mlserve.monitor import drift_stats
from mlserve.monitor.drift import DriftMonitor, build_reference
from mlserve.spec import DriftSettings


def test_psi_matches_hand_computation():
    ref, live = np.array([50, 30, 20]), np.array([20, 30, 50])
    hand = (0.2 - 0.5) * math.log(0.2 / 0.5) + 0 + (0.5 - 0.2) * math.log(0.5 / 0.2)
    assert drift_stats.psi(ref, live) == pytest.approx(hand, rel=1e-12)
    p, q = ref / ref.sum(), live / live.sum()
    # PSI is the symmetrised Kullback-Leibler divergence.
    assert drift_stats.psi(ref, live) == pytest.approx(np.sum(special.rel_entr(q, p) + special.rel_entr(p, q)))
    assert drift_stats.psi(ref, ref * 7) == pytest.approx(0.0, abs=1e-15)


def test_psi_of_an_empty_bin_is_large_but_finite():
    value = drift_stats.psi(np.array([50, 50]), np.array([100, 0]))
    assert math.isfinite(value) and value > 1.0


def test_kolmogorov_sf_matches_scipy():
    for x in (0.3, 0.5, 0.8, 1.0, 1.36, 2.0, 3.0):
        assert drift_stats.kolmogorov_sf(x) == pytest.approx(stats.kstwobign.sf(x), abs=1e-9)


def _monitor_on(reference: np.ndarray, settings: DriftSettings) -> DriftMonitor:
    ref = build_reference({"f": reference.astype(np.float64)}, settings, "test")
    return DriftMonitor("m", "1", settings, ref)


def _feed(monitor: DriftMonitor, values: np.ndarray) -> None:
    for chunk in np.array_split(values.astype(np.float64), 10):
        monitor.update({"f": chunk})
    monitor.refresh()


def test_ks_is_exact_on_discrete_data():
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 6, 4000)
    live = rng.choice(6, 3000, p=[0.1, 0.1, 0.2, 0.2, 0.2, 0.2])
    settings = DriftSettings(window=10**6, min_rows=1)
    monitor = _monitor_on(reference, settings)
    _feed(monitor, live)
    (feature,) = monitor.report().features
    expected = stats.ks_2samp(reference, live, method="asymp")
    assert feature.ks_statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert feature.ks_pvalue == pytest.approx(expected.pvalue, rel=0.05, abs=1e-6)
    # PSI by hand over the six values (each its own bin here: ten PSI groups > six values).
    p = np.bincount(reference, minlength=6) / len(reference)
    q = np.bincount(live, minlength=6) / len(live)
    assert feature.psi == pytest.approx(float(np.sum((q - p) * np.log(q / p))), rel=1e-9)


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.2, 1.0])
def test_ks_on_continuous_data_is_within_one_percentile_of_scipy(shift):
    rng = np.random.default_rng(2)
    reference = rng.standard_normal(20000)
    live = rng.standard_normal(5000) + shift
    monitor = _monitor_on(reference, DriftSettings(window=10**6, min_rows=1))
    _feed(monitor, live)
    (feature,) = monitor.report().features
    expected = stats.ks_2samp(reference, live, method="asymp")
    # Binned at the reference's percentiles, the gap can be read at most one bin away.
    assert feature.ks_statistic == pytest.approx(expected.statistic, abs=0.011)
    assert feature.ks_statistic <= expected.statistic + 1e-12
    if expected.pvalue > 1e-6:
        assert abs(feature.ks_pvalue - expected.pvalue) < 0.15
    else:
        assert feature.ks_pvalue < 1e-4


def test_psi_of_a_known_shift_matches_the_decile_formula():
    """N(0,1) reference deciles, live N(0.5,1): PSI over deciles computed from the normal CDF."""
    rng = np.random.default_rng(3)
    reference = rng.standard_normal(200000)
    live = rng.standard_normal(100000) + 0.5
    monitor = _monitor_on(reference, DriftSettings(window=10**6, min_rows=1))
    _feed(monitor, live)
    cuts = stats.norm.ppf(np.linspace(0, 1, 11))
    p = np.full(10, 0.1)
    q = np.diff(stats.norm.cdf(cuts - 0.5))
    hand = float(np.sum((q - p) * np.log(q / p)))
    assert monitor.report().features[0].psi == pytest.approx(hand, rel=0.05)


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="psi_warn"):
        DriftSettings.parse({"psi_warn": 0.5, "psi_alert": 0.2})
    with pytest.raises(ValueError, match="unknown key"):
        DriftSettings.parse({"windw": 10})
    with pytest.raises(ValueError, match="window must be an integer"):
        DriftSettings.parse({"window": "big"})
    assert DriftSettings.parse({"window": 500, "psi_alert": 1}).psi_alert == 1


def test_vectorised_statistics_match_the_scalar_ones():
    rng = np.random.default_rng(9)
    ref = rng.integers(0, 50, (6, 12))
    live = rng.integers(0, 50, (6, 12))
    live[2] = 0  # a feature with no live rows yet
    ks = drift_stats.ks_statistics(ref, live)
    pvalues = drift_stats.ks_pvalues(ks, ref.sum(axis=1), live.sum(axis=1))
    for i in range(6):
        assert ks[i] == pytest.approx(drift_stats.ks_statistic(ref[i], live[i]))
        assert pvalues[i] == pytest.approx(drift_stats.ks_pvalue(ks[i], int(ref[i].sum()), int(live[i].sum())))
    # each feature one PSI group per bin: the grouped PSI is the plain one
    group_index = np.arange(6 * 12).reshape(6, 12)
    group_feature = np.repeat(np.arange(6), 12)
    psi = drift_stats.psis(group_index, group_feature, ref, live)
    for i in range(6):
        assert psi[i] == pytest.approx(drift_stats.psi(ref[i], live[i]))
