"""The accuracy gate and the choice of a winner.

A candidate passes when every budget that applies to it holds: top-1 agreement with the source
(score outputs), max abs difference, and the task metric (when the validation set has labels).
A candidate no budget applies to is rejected: nothing unmeasured is published.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlserve.optimize.evaluate import Figures

OBJECTIVES = ("throughput", "latency", "size")


@dataclass(frozen=True, slots=True)
class GateSettings:
    """The accuracy budget (--max-top1-drop, --max-abs-diff, --max-metric-drop, --min-cosine) and the objective."""

    max_top1_drop: float | None = 0.01
    max_abs_diff: float | None = None
    max_metric_drop: float | None = 0.01
    objective: str = "throughput"
    min_gain: float = 1.05
    """The winner must beat the source on the objective by this factor, so timing noise publishes nothing."""
    min_cosine: float | None = None
    """Lowest mean per-row cosine similarity to the source's outputs (embeddings)."""

    def __post_init__(self) -> None:
        if self.min_gain < 1.0:
            raise ValueError("min_gain must be >= 1")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        for name in ("max_top1_drop", "max_abs_diff", "max_metric_drop"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")


def rejection(figures: Figures, source: Figures, gate: GateSettings) -> str | None:
    """Why the candidate fails the gate, or None when it passes."""
    checked = False
    if gate.max_top1_drop is not None and figures.top1_agreement is not None:
        checked = True
        drop = 1.0 - figures.top1_agreement
        if drop > gate.max_top1_drop:
            return f"top-1 agreement {figures.top1_agreement:.4f}: drop {drop:.4f} > {gate.max_top1_drop}"
    if gate.max_abs_diff is not None:
        checked = True
        if figures.max_abs_diff > gate.max_abs_diff:
            return f"max abs diff {figures.max_abs_diff:.4g} > {gate.max_abs_diff}"
    if gate.max_metric_drop is not None and figures.metric is not None and source.metric is not None:
        checked = True
        drop = source.metric - figures.metric
        if drop > gate.max_metric_drop:
            return f"accuracy {figures.metric:.4f}: drop {drop:.4f} > {gate.max_metric_drop}"
    if gate.min_cosine is not None and figures.cosine is not None:
        checked = True
        if figures.cosine < gate.min_cosine:
            return f"cosine to the source {figures.cosine:.4f} < {gate.min_cosine}"
    if not checked:
        return "no accuracy budget applies to this model's outputs: give --max-abs-diff or --min-cosine"
    return None


def gain(figures: Figures, source: Figures, objective: str) -> float:
    """How many times better than the source on the objective (> 1 is better)."""
    if objective == "throughput":
        return figures.throughput_rps / max(source.throughput_rps, 1e-12)
    if objective == "latency":
        return source.p50_ms / max(figures.p50_ms, 1e-12)
    return source.num_bytes / max(figures.num_bytes, 1)
