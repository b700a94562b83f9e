"""Per-version drift monitors: a frozen reference histogram per feature, a sliding window of live
counts, and the PSI / KS report computed from the two.

Design: bin edges are frozen from the reference's quantiles when the version loads (or once the
first `reference_rows` rows have been served when there is no reference.npz). After that a batch
costs one binary search per feature and one bincount; nothing else is
kept. The window is a ring of ten slices of counts, so old traffic leaves it slice by slice.
`update` runs on the monitor's worker thread only; `report` hands out the last immutable snapshot.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mlserve.monitor import drift_stats
from mlserve.spec import DriftSettings

log = logging.getLogger("mlserve.drift")

NUM_SLICES = 10
REPORT_INTERVAL_S = 1.0
"""Reports are recomputed at most this often (a recompute is about 0.2 ms per feature)."""
STATUSES = ("collecting", "ok", "warn", "alert")


@dataclass(frozen=True, slots=True)
class Reference:
    """Frozen bin edges and reference counts, one row per feature (edges padded with +inf)."""

    names: tuple[str, ...]
    edges: np.ndarray
    """(features, max_edges), each row sorted, padded with +inf."""
    counts: np.ndarray
    """(features, max_edges + 2): bins 0..num_edges, then one slot for NaN and infinities."""
    num_edges: tuple[int, ...]
    group_index: np.ndarray
    """(features, max_edges + 1): the global PSI group of each bin (padding bins join the last)."""
    group_feature: np.ndarray
    """The feature of each global PSI group."""
    num_rows: int
    source: str


def build_reference(features: dict[str, np.ndarray], settings: DriftSettings, source: str) -> Reference:
    names = tuple(features)
    per_feature = [drift_stats.quantile_edges(features[n], settings.fine_bins) for n in names]
    width = max((len(e) for e in per_feature), default=0)
    edges = np.full((len(names), width), np.inf)
    for i, e in enumerate(per_feature):
        edges[i, : len(e)] = e
    num_rows = len(next(iter(features.values()))) if features else 0
    matrix = np.stack([features[n] for n in names], axis=1) if names else np.zeros((0, 0))
    counts = bin_counts(matrix, edges)
    num_edges = tuple(len(e) for e in per_feature)
    group_index, group_feature = _global_groups(counts, num_edges, settings.bins)
    return Reference(names, edges, counts, num_edges, group_index, group_feature, num_rows, source)


def _global_groups(counts: np.ndarray, num_edges: tuple[int, ...], bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Number every feature's PSI groups in one sequence, so PSI for all features is one bincount."""
    width = counts.shape[1] - 1
    group_index = np.zeros((len(num_edges), width), dtype=np.int64)
    group_feature: list[int] = []
    for i, n in enumerate(num_edges):
        groups = drift_stats.psi_groups(counts[i, : n + 1], bins)
        group_index[i, : n + 1] = groups + len(group_feature)
        group_index[i, n + 1 :] = groups[-1] + len(group_feature)
        group_feature.extend([i] * (int(groups[-1]) + 1))
    return group_index, np.array(group_feature, dtype=np.int64)


def bin_counts(matrix: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(rows, features) values -> (features, max_edges + 2) counts: one binary search per feature
    over the whole chunk, then one bincount for all features."""
    num_features, width = edges.shape
    slots = width + 2
    index = np.empty(matrix.shape, dtype=np.int64)
    for i in range(num_features):
        index[:, i] = np.searchsorted(edges[i], matrix[:, i], side="right")
    index[~np.isfinite(matrix)] = width + 1
    flat = index + (np.arange(num_features) * slots)[None, :]
    return np.bincount(flat.ravel(), minlength=num_features * slots).reshape(num_features, slots)


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    name: str
    psi: float
    ks_statistic: float
    ks_pvalue: float
    status: str

    def to_dict(self) -> dict:
        return {"name": self.name, "psi": self.psi, "ks_statistic": self.ks_statistic,
                "ks_pvalue": self.ks_pvalue, "status": self.status}


@dataclass(frozen=True, slots=True)
class FeatureHistogram:
    """Counts per PSI group: group k holds values in [edges[k-1], edges[k]) (open at both ends)."""

    name: str
    edges: tuple[float, ...]
    reference: tuple[int, ...]
    live: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"feature": self.name, "edges": list(self.edges), "reference": list(self.reference),
                "live": list(self.live)}


@dataclass(frozen=True, slots=True)
class DriftReport:
    """One version's drift at one moment."""

    model: str
    version: str
    status: str
    reference_source: str
    reference_rows: int
    window_rows: int
    features: tuple[FeatureDrift, ...]
    top: tuple[str, ...]
    psi_warn: float
    psi_alert: float

    def to_dict(self) -> dict:
        return {
            "model_name": self.model, "model_version": self.version, "status": self.status,
            "reference": {"source": self.reference_source, "rows": self.reference_rows},
            "window_rows": self.window_rows,
            "thresholds": {"psi_warn": self.psi_warn, "psi_alert": self.psi_alert},
            "top_drifting": list(self.top),
            "features": [f.to_dict() for f in self.features],
        }


@dataclass(slots=True)
class _Slice:
    started: float
    rows: int
    counts: np.ndarray


class SlidingWindow:
    """Live counts over the last `window` rows or `window_s` seconds, kept as ten slices."""

    def __init__(self, shape: tuple[int, int], settings: DriftSettings, clock: Callable[[], float]) -> None:
        self._shape = shape
        self._settings = settings
        self._clock = clock
        self._slices: deque[_Slice] = deque()
        self.total = np.zeros(shape, dtype=np.int64)
        self.num_rows = 0

    def rows_per_add(self) -> int:
        """Largest piece `add` takes next: what fills the current slice of a count window (or a whole
        new slice), so a big chunk cannot overfill one slice."""
        if self._settings.window_s > 0:
            return 1 << 30
        capacity = math.ceil(self._settings.window / NUM_SLICES)
        if not self._slices or self._slices[-1].rows >= capacity:
            return capacity
        return capacity - self._slices[-1].rows

    def add(self, counts: np.ndarray, rows: int) -> None:
        self.expire()
        if not self._slices or self._is_slice_full(self._slices[-1]):
            self._slices.append(_Slice(self._clock(), 0, np.zeros(self._shape, dtype=np.int64)))
            if self._settings.window_s <= 0 and len(self._slices) > NUM_SLICES:
                self._drop_oldest()
        current = self._slices[-1]
        current.counts += counts
        current.rows += rows
        self.total += counts
        self.num_rows += rows

    def expire(self) -> None:
        """Drop slices that have left a time window (a count window drops them in `add`)."""
        if self._settings.window_s <= 0:
            return
        horizon = self._clock() - self._settings.window_s
        while self._slices and self._slices[0].started < horizon:
            self._drop_oldest()

    def _is_slice_full(self, last: _Slice) -> bool:
        if self._settings.window_s > 0:
            return self._clock() - last.started >= self._settings.window_s / NUM_SLICES
        return last.rows >= math.ceil(self._settings.window / NUM_SLICES)

    def _drop_oldest(self) -> None:
        oldest = self._slices.popleft()
        self.total -= oldest.counts
        self.num_rows -= oldest.rows


class DriftMonitor:
    """Owns one version's reference, live window and latest report."""

    def __init__(
        self, model: str, version: str, settings: DriftSettings, reference: Reference | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model, self.version = model, version
        self.settings = settings
        self._clock = clock
        self._pending: list[dict[str, np.ndarray]] = []
        self._num_pending = 0
        self._reference: Reference | None = None
        self._window: SlidingWindow | None = None
        self._reported_at = 0.0
        self._report = self._empty_report()
        if reference is not None:
            self._freeze(reference)

    @property
    def reference(self) -> Reference | None:
        return self._reference

    def report(self) -> DriftReport:
        return self._report

    def histogram(self, feature: str) -> FeatureHistogram | None:
        """Reference and live counts of one feature over its PSI groups (about `bins` of equal
        reference mass), for a picture of the shift; None before the reference is frozen."""
        ref, window = self._reference, self._window
        if ref is None or window is None or feature not in ref.names:
            return None
        i = ref.names.index(feature)
        n = ref.num_edges[i]
        groups = ref.group_index[i, : n + 1] - ref.group_index[i, 0]
        live = window.total[i, : n + 1].copy()  # the worker may add meanwhile: one consistent copy
        ref_counts = np.bincount(groups, weights=ref.counts[i, : n + 1]).astype(np.int64)
        live_counts = np.bincount(groups, weights=live, minlength=len(ref_counts)).astype(np.int64)
        starts = np.flatnonzero(np.diff(groups)) + 1  # first fine bin of every group after the first
        edges = tuple(float(ref.edges[i, s - 1]) for s in starts)  # bin s holds values >= edges[s-1]
        return FeatureHistogram(feature, edges, tuple(int(c) for c in ref_counts), tuple(int(c) for c in live_counts))

    def update(self, features: dict[str, np.ndarray]) -> None:
        """Feed one chunk of traffic (feature -> values, equal lengths); worker thread only."""
        if not features:
            return
        if self._reference is None:
            self._collect_reference(features)
            return
        names = self._reference.names
        rows = len(next(iter(features.values())))
        matrix = np.empty((rows, len(names)))
        for i, name in enumerate(names):
            column = features.get(name)
            matrix[:, i] = column if column is not None and len(column) == rows else np.nan
        start = 0
        while start < rows:
            piece = matrix[start : start + self._window.rows_per_add()]
            self._window.add(bin_counts(piece, self._reference.edges), len(piece))
            start += len(piece)
        self.refresh_if_due()

    def refresh_if_due(self) -> None:
        if self._clock() - self._reported_at >= REPORT_INTERVAL_S:
            self.refresh()

    def refresh(self) -> None:
        """Recompute the report from the current counts (also ages a time window)."""
        if self._window is None:
            return
        self._window.expire()
        self._reported_at = self._clock()
        previous = self._report.status
        self._report = self._compute()
        if self._report.status != previous and self._report.status in ("warn", "alert"):
            log.warning("drift %s: model %s version %s, top features %s",
                        self._report.status, self.model, self.version, ", ".join(self._report.top))
        elif previous == "alert" and self._report.status == "ok":
            log.info("drift cleared: model %s version %s", self.model, self.version)

    def _collect_reference(self, features: dict[str, np.ndarray]) -> None:
        self._pending.append(features)
        self._num_pending += len(next(iter(features.values())))
        if self._num_pending < self.settings.reference_rows:
            self._report = self._empty_report()  # shows how many reference rows are in so far
            return
        names = [n for n in self._pending[0] if all(n in chunk for chunk in self._pending)]
        merged = {n: np.concatenate([chunk[n] for chunk in self._pending]) for n in names}
        self._pending = []
        self._freeze(build_reference(merged, self.settings, f"first {self._num_pending} rows served"))

    def _freeze(self, reference: Reference) -> None:
        self._reference = reference
        self._window = SlidingWindow(reference.counts.shape, self.settings, self._clock)
        self._report = self._compute()
        log.info("drift reference for model %s version %s: %s, %d rows, %d features",
                 self.model, self.version, reference.source, reference.num_rows, len(reference.names))

    def _compute(self) -> DriftReport:
        """All features at once: PSI over each feature's groups, KS over the fine bins."""
        ref, window = self._reference, self._window
        rows = window.num_rows
        width = ref.edges.shape[1] + 1  # bins, without the NaN slot
        ref_counts, live_counts = ref.counts[:, :width], window.total[:, :width]
        psi = drift_stats.psis(ref.group_index, ref.group_feature, ref_counts, live_counts)
        ks = drift_stats.ks_statistics(ref_counts, live_counts)
        pvalues = drift_stats.ks_pvalues(ks, ref_counts.sum(axis=1), live_counts.sum(axis=1))
        features = tuple(
            FeatureDrift(name, float(psi[i]), float(ks[i]), float(pvalues[i]), self._status_of(float(psi[i]), rows))
            for i, name in enumerate(ref.names)
        )
        ranked = sorted(features, key=lambda f: f.psi, reverse=True)
        worst = max((STATUSES.index(f.status) for f in features), default=0)
        top = tuple(f.name for f in ranked[: self.settings.top] if f.psi > 0)
        return self._report_of(STATUSES[worst], rows, features, top)

    def _status_of(self, value: float, rows: int) -> str:
        needed = self.settings.min_rows
        if self.settings.window_s <= 0:  # a full count window holds at least nine of its ten slices
            needed = min(needed, self.settings.window - math.ceil(self.settings.window / NUM_SLICES))
        if rows < needed:
            return "collecting"
        if value >= self.settings.psi_alert:
            return "alert"
        return "warn" if value >= self.settings.psi_warn else "ok"

    def _empty_report(self) -> DriftReport:
        return self._report_of("collecting", 0, (), ())

    def _report_of(self, status: str, rows: int, features: tuple, top: tuple) -> DriftReport:
        ref = self._reference
        return DriftReport(
            self.model, self.version, status,
            ref.source if ref else f"collecting the first {self.settings.reference_rows} rows served",
            ref.num_rows if ref else self._num_pending, rows, features, top,
            self.settings.psi_warn, self.settings.psi_alert,
        )
