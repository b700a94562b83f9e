"""One harness for every candidate and the source: accuracy against the source's outputs on the
validation set, latency at batch 1, throughput at the max batch size, size on disk.

Each artifact runs in the backend the server would serve it with, under the model's own settings
(intra_op_threads, max_batch_size), so the figures are the ones serving will see.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mlserve.optimize.base import Source
from mlserve.optimize.pause import CLOCK
from mlserve.registry.opening import Trust, open_backend


@dataclass(frozen=True, slots=True)
class Budget:
    """How much worse than the source a candidate may be, and how long timing may take."""

    latency_s: float = 1.0
    """Wall time spent timing batch-1 requests (and again for the max batch)."""
    min_runs: int = 5


@dataclass(frozen=True, slots=True)
class Figures:
    """What one candidate measured."""

    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float | None
    """Share of rows whose argmax matches the source's, for score outputs ([batch, classes])."""
    metric: float | None
    """Accuracy against `labels` when the validation set has them."""
    cosine: float | None
    """Mean per-row cosine similarity to the source (the worst output), for floating outputs with
    a feature dimension (embeddings, scores)."""
    p50_ms: float
    p99_ms: float
    throughput_rps: float
    """Rows per second at the max batch size."""
    num_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def batch_rows(source: Source) -> int:
    return source.config.batching.max_batch_size or source.num_rows


def predict(backend, source: Source) -> dict[str, np.ndarray]:
    """Every validation row through a loaded backend, in batches of the max batch size."""
    step, parts = batch_rows(source), []
    for start in range(0, source.num_rows, step):
        parts.append(backend.infer(source.rows(start, start + step)))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


@dataclass(frozen=True, slots=True)
class Accuracy:
    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    top1_agreement: float | None = None
    cosine: float | None = None


def _cosine(got: np.ndarray, want: np.ndarray) -> float:
    a, b = got.reshape(len(got), -1).astype(np.float64), want.reshape(len(want), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(norms, 1e-30)))


def _accuracy(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> Accuracy:
    max_diff, mean_diffs, agreements, cosines = 0.0, [], [], []
    for name, want in expected.items():
        got = actual[name]
        if got.shape != want.shape:
            return Accuracy(float("inf"), float("inf"), 0.0 if want.ndim == 2 else None, 0.0)
        if np.issubdtype(want.dtype, np.floating) and want.ndim >= 2:
            cosines.append(_cosine(got, want))
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        max_diff = max(max_diff, float(diff.max(initial=0.0)))
        mean_diffs.append(float(diff.mean()) if diff.size else 0.0)
        if is_scores(want):
            agreements.append(float(np.mean(got.argmax(axis=1) == want.argmax(axis=1))))
    return Accuracy(max_diff, float(np.mean(mean_diffs)) if mean_diffs else 0.0,
                    min(agreements) if agreements else None, min(cosines) if cosines else None)


def is_scores(array: np.ndarray) -> bool:
    """[batch, classes] floating outputs are read as class scores."""
    return array.ndim == 2 and array.shape[1] > 1 and np.issubdtype(array.dtype, np.floating)


def task_metric(outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> float | None:
    """Top-1 accuracy of the first score output against integer labels."""
    if labels is None or not np.issubdtype(labels.dtype, np.integer):
        return None
    scores = next((a for a in outputs.values() if is_scores(a)), None)
    return None if scores is None else float(np.mean(scores.argmax(axis=1) == labels.reshape(-1)))


def _timings(backend, feed: dict[str, np.ndarray], budget: Budget) -> list[float]:
    """Wall times of single calls; a call the server paused the run during is not a sample, and the
    budget counts only time the run was not paused."""
    backend.infer(feed)
    times, deadline = [], CLOCK.now() + budget.latency_s
    while len(times) < budget.min_runs or CLOCK.now() < deadline:
        resumes = CLOCK.num_resumes
        began = time.perf_counter()
        backend.infer(feed)
        took = time.perf_counter() - began
        if CLOCK.num_resumes == resumes:
            times.append(took)
    return times


def measure(folder: Path, backend_name: str, source: Source, reference: dict[str, np.ndarray] | None,
            budget: Budget, num_bytes: int, trust: Trust) -> tuple[Figures, dict[str, np.ndarray]]:
    """Load the artifact as the server would and measure it; returns its figures and its outputs."""
    backend = open_backend(backend_name, source.config, folder, "cpu", trust)
    try:
        outputs = predict(backend, source)
        single = _timings(backend, source.rows(0, 1), budget)
        full = source.rows(0, batch_rows(source))
        batched = _timings(backend, full, budget)
    finally:
        backend.unload()
    accuracy = _accuracy(reference, outputs) if reference is not None else _accuracy(outputs, outputs)
    rows = len(next(iter(full.values())))
    figures = Figures(
        accuracy.max_abs_diff, accuracy.mean_abs_diff, accuracy.top1_agreement, task_metric(outputs, source.labels),
        accuracy.cosine,
        float(np.percentile(single, 50) * 1e3), float(np.percentile(single, 99) * 1e3),
        rows / float(np.median(batched)), num_bytes,
    )
    return figures, outputs
