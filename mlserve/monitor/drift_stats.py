"""Drift statistics over integer-count histograms that share one set of frozen bin edges.

Both the reference and the live window are counts per bin, so PSI and the two-sample KS statistic
come from the counts alone: no raw samples are kept once the edges are frozen.
"""

from __future__ import annotations

import math

import numpy as np

PSI_EPSILON = 1e-4
"""Floor for a bin's share, so an empty bin gives a large but finite PSI term."""


def quantile_edges(values: np.ndarray, num_bins: int) -> np.ndarray:
    """Interior bin edges at the reference's quantiles; ties collapse, so discrete data gets one
    bin per distinct value (bins are (-inf, e0), [e0, e1), ..., [e_last, inf))."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(0)
    edges = np.quantile(finite, np.linspace(0.0, 1.0, num_bins + 1)[1:-1], method="inverted_cdf")
    edges = np.unique(np.concatenate([edges, [finite.min()]]))
    return edges


def psi_groups(reference_counts: np.ndarray, num_groups: int) -> np.ndarray:
    """Merge neighbouring fine bins until each group holds about 1/num_groups of the reference;
    returns the group of each fine bin. PSI is taken over these groups, KS over the fine bins."""
    total = reference_counts.sum()
    groups = np.zeros(len(reference_counts), dtype=np.int64)
    if total == 0:
        return groups
    target = total / num_groups
    group, mass = 0, 0
    for i, count in enumerate(reference_counts):
        if mass >= target and count > 0:
            group, mass = group + 1, 0
        groups[i] = group
        mass += count
    return groups


def psi(reference_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """Population stability index: sum over bins of (q - p) * ln(q / p), p reference, q live share."""
    p = np.maximum(reference_counts / max(reference_counts.sum(), 1), PSI_EPSILON)
    q = np.maximum(live_counts / max(live_counts.sum(), 1), PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_statistic(reference_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """Largest gap between the two empirical CDFs, read at every bin edge."""
    cdf_ref = np.cumsum(reference_counts) / max(reference_counts.sum(), 1)
    cdf_live = np.cumsum(live_counts) / max(live_counts.sum(), 1)
    return float(np.max(np.abs(cdf_ref - cdf_live))) if len(cdf_ref) else 0.0


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution: 2 * sum_k (-1)^(k-1) exp(-2 k^2 x^2)."""
    if x <= 0:
        return 1.0
    if x < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-16:
            break
    return min(max(2.0 * total, 0.0), 1.0)


def ks_pvalue(statistic: float, num_reference: int, num_live: int) -> float:
    """Two-sided p-value of the two-sample KS statistic, asymptotic with Stephens' small-sample
    correction (effective size n*m/(n+m))."""
    if num_reference == 0 or num_live == 0:
        return 1.0
    en = num_reference * num_live / (num_reference + num_live)
    root = math.sqrt(en)
    return kolmogorov_sf((root + 0.12 + 0.11 / root) * statistic)


def ks_pvalues(statistics: np.ndarray, num_reference: np.ndarray, num_live: np.ndarray) -> np.ndarray:
    """`ks_pvalue` for many features at once."""
    n, m = num_reference.astype(np.float64), num_live.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.sqrt(n * m / (n + m))
        lam = (root + 0.12 + 0.11 / root) * statistics
    k = np.arange(1, 101, dtype=np.float64)
    signs = np.where(k % 2 == 1, 1.0, -1.0)
    lam = np.nan_to_num(lam, nan=0.0, posinf=1e3)
    series = 2.0 * np.sum(signs * np.exp(-2.0 * np.outer(lam * lam, k * k)), axis=1)
    out = np.clip(series, 0.0, 1.0)
    out[(lam < 0.2) | (n == 0) | (m == 0)] = 1.0
    return out


def ks_statistics(reference_counts: np.ndarray, live_counts: np.ndarray) -> np.ndarray:
    """`ks_statistic` per row of two (features, bins) count matrices."""
    cdf_ref = np.cumsum(reference_counts, axis=1) / np.maximum(reference_counts.sum(axis=1, keepdims=True), 1)
    cdf_live = np.cumsum(live_counts, axis=1) / np.maximum(live_counts.sum(axis=1, keepdims=True), 1)
    if cdf_ref.shape[1] == 0:
        return np.zeros(len(cdf_ref))
    return np.max(np.abs(cdf_ref - cdf_live), axis=1)


def psis(group_index: np.ndarray, group_feature: np.ndarray, reference_counts: np.ndarray,
         live_counts: np.ndarray) -> np.ndarray:
    """`psi` per feature, over each feature's own PSI groups: `group_index` (features, bins) gives
    the global group of every bin, `group_feature` the feature of every global group."""
    num_groups, num_features = len(group_feature), len(reference_counts)

    def shares(counts: np.ndarray) -> np.ndarray:
        grouped = np.bincount(group_index.ravel(), weights=counts.ravel(), minlength=num_groups)
        totals = np.maximum(counts.sum(axis=1), 1)[group_feature]
        return np.maximum(grouped / totals, PSI_EPSILON)

    p, q = shares(reference_counts), shares(live_counts)
    return np.bincount(group_feature, weights=(q - p) * np.log(q / p), minlength=num_features)
