"""The [drift] section of model.toml, parsed and checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from mlserve.spec.table import between, parse_table

_MAX_ROWS = 10_000_000


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """How one model's drift is measured and judged."""

    enabled: bool = True
    reference: str = "reference.npz"
    """File in the version folder: arrays named like the model's inputs (and optionally outputs). A
    relative path that stays inside the folder: no absolute path, no `..` (links are checked on load)."""
    reference_rows: int = field(default=1000, metadata=between(1, _MAX_ROWS))
    """Without that file, the first this many rows served become the reference."""
    window: int = field(default=10000, metadata=between(1, _MAX_ROWS))
    """Live rows compared with the reference (a count window)."""
    window_s: float = field(default=0.0, metadata=between(0, 30 * 86400))
    """When > 0, a time window of this many seconds instead of a row count."""
    psi_warn: float = field(default=0.1, metadata=between(0, 1000))
    psi_alert: float = field(default=0.25, metadata=between(0, 1000))
    bins: int = field(default=10, metadata=between(1, 1000))
    """PSI bins (reference deciles by default)."""
    fine_bins: int = field(default=100, metadata=between(1, 10_000))
    """KS bins: the reference's percentiles."""
    max_columns: int = field(default=32, metadata=between(1, 4096))
    """2-D tensors up to this many columns get one feature per column; wider ones are summarised."""
    min_rows: int = field(default=1000, metadata=between(0, _MAX_ROWS))
    """Live rows needed before a status other than 'collecting' (at most the count window). PSI over
    ten bins of n same-distribution rows is about 9/n by chance alone, so small windows cry wolf."""
    top: int = field(default=5, metadata=between(1, 1000))
    """How many of the most drifting features the report names."""

    def __post_init__(self) -> None:
        parts = PurePosixPath(self.reference.replace("\\", "/")).parts
        if not parts or parts[0] == "/" or ".." in parts or "\0" in self.reference or ":" in parts[0]:
            raise ValueError(f"[drift] reference must be a file path inside the version folder, got {self.reference!r}")
        if not 0 <= self.psi_warn <= self.psi_alert:
            raise ValueError("[drift] need 0 <= psi_warn <= psi_alert")
        for name in ("reference_rows", "window", "bins", "fine_bins", "max_columns", "top"):
            if getattr(self, name) < 1:
                raise ValueError(f"[drift] {name} must be >= 1")
        if self.window_s < 0 or self.min_rows < 0:
            raise ValueError("[drift] window_s and min_rows must be >= 0")
        if self.bins > self.fine_bins:
            raise ValueError("[drift] bins must be <= fine_bins")

    @classmethod
    def parse(cls, raw: Any) -> DriftSettings:
        """From model.toml's [drift] table (None = all defaults); ValueError names the bad key."""
        return parse_table(cls, raw, "[drift]")
