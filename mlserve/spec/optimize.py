"""The [optimize] section of model.toml: whether a new version of the model is optimized on its
own when it arrives, and the run's passes, gate, validation data and canary rollout.

    [optimize]
    on_new_version = true
    passes = ["int8_dynamic"]        # empty = the default passes of `mlserve optimize`
    data = "val.npz"                 # in the new version's folder; none = inputs made from the spec
    max_top1_drop = 0.01
    rollout = [10, 50, 100]          # canary steps (percent); none = the winner serves at once

The names and ranges are those of the admin optimize route's body, so a section that parses here
is a run the route accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mlserve.spec.table import between, parse_table

PASS_NAMES = ("export", "graph_opt", "int8_dynamic", "int8_static", "fp16", "prune", "aoti", "distill")
"""Every pass `mlserve optimize` knows (mlserve/optimize/__init__.py PASSES; a test keeps them equal)."""
OBJECTIVES = ("throughput", "latency", "size")
MAX_PASSES = len(PASS_NAMES)
_DATA_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.npz$")


@dataclass(frozen=True, slots=True)
class OptimizeSettings:
    """One model's automatic optimization: off unless `on_new_version` is true."""

    on_new_version: bool = False
    """Queue one optimization run of every new version that arrives (upload, push, reload), at idle priority."""
    passes: tuple[str, ...] = ()
    """Pass names; empty = the default passes."""
    data: str | None = None
    """An .npz file in the new version's folder: validation inputs (and labels)."""
    objective: str = "throughput"
    """throughput, latency or size: what the winner must improve by min_gain."""
    max_top1_drop: float | None = field(default=0.01, metadata=between(0, 1))
    max_abs_diff: float | None = field(default=None, metadata=between(0, 1e6))
    max_metric_drop: float | None = field(default=0.01, metadata=between(0, 1))
    min_gain: float = field(default=1.05, metadata=between(1, 100))
    min_cosine: float | None = field(default=None, metadata=between(-1, 1))
    sparsity: float = field(default=0.3, metadata=between(0.01, 0.99))
    calibration_rows: int = field(default=256, metadata=between(1, 100_000))
    distill_width: float = field(default=0.5, metadata=between(0.01, 0.99))
    """Share of each hidden layer's channels the distilled student keeps."""
    distill_steps: int = field(default=2000, metadata=between(1, 1_000_000))
    distill_time_s: float = field(default=60.0, metadata=between(1, 3600))
    distill_seed: int = field(default=0, metadata=between(0, 2**31 - 1))
    timing_s: float = field(default=1.0, metadata=between(0.01, 60))
    """Wall time spent timing each candidate."""
    rollout: tuple[float, ...] = field(default=(), metadata=between(0.01, 100))
    """Canary steps in percent, not decreasing; empty = no rollout, the winner serves once loaded."""
    rollout_interval_s: float = field(default=60.0, metadata=between(1, 7 * 86400))
    """Seconds each rollout step lasts before it is judged."""

    def __post_init__(self) -> None:
        unknown = [p for p in self.passes if p not in PASS_NAMES]
        if unknown:
            raise ValueError(f"[optimize] passes: unknown pass(es) {', '.join(unknown)}; known: {', '.join(PASS_NAMES)}")
        if len(self.passes) > MAX_PASSES:
            raise ValueError(f"[optimize] passes may name at most {MAX_PASSES} passes")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"[optimize] objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.data is not None and not _DATA_FILE.fullmatch(self.data):
            raise ValueError(f"[optimize] data names an .npz file in the version folder (no path), got {self.data!r}")
        if list(self.rollout) != sorted(self.rollout):
            raise ValueError("[optimize] rollout steps must not decrease")

    @classmethod
    def parse(cls, raw: Any) -> OptimizeSettings:
        """From model.toml's [optimize] table (None = off); ValueError names the bad key."""
        return parse_table(cls, raw, "[optimize]")

    def to_body(self, version: int) -> dict:
        """The admin optimize route's JSON body for a run of `version` (one checker for both)."""
        body: dict[str, Any] = {
            "version": version, "objective": self.objective, "max_top1_drop": self.max_top1_drop,
            "max_abs_diff": self.max_abs_diff, "max_metric_drop": self.max_metric_drop, "min_gain": self.min_gain,
            "min_cosine": self.min_cosine, "sparsity": self.sparsity, "calibration_rows": self.calibration_rows,
            "timing_s": self.timing_s, "distill_width": self.distill_width, "distill_steps": self.distill_steps,
            "distill_time_s": self.distill_time_s, "distill_seed": self.distill_seed,
        }
        if self.passes:
            body["passes"] = list(self.passes)
        if self.data is not None:
            body["data"] = self.data
        if self.rollout:
            body["rollout"] = {"steps": list(self.rollout), "interval_s": self.rollout_interval_s}
        return body
