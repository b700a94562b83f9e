"""Warm-up: run a freshly loaded version through every batch size it will see before it takes traffic.

Sample inputs come from the file that model.toml's `[warmup]` table names (an .npz in the version
folder, one array per input), or are generated from the input spec (zeros). The batch sizes are
`[warmup] batch_sizes`, or 1, the preferred sizes and max_batch_size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlserve.engine import Backend
from mlserve.errors import ModelLoadError
from mlserve.monitor.npz import read_npz
from mlserve.spec import DATATYPE_TO_NUMPY, ModelConfig, ModelInfo, TensorSpec


def warmup_inputs(info: ModelInfo, rows: int = 1) -> dict[str, np.ndarray] | None:
    """`rows` rows of zeros per input, or None when a non-batch dimension is unknown."""
    inputs = {}
    for spec in info.inputs:
        dims = list(spec.shape)
        if info.max_batch_size > 0:
            dims[0] = rows
        if any(d < 0 for d in dims):
            return None
        inputs[spec.name] = _zeros(spec, tuple(dims))
    return inputs


def _zeros(spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    if spec.datatype == "BYTES":
        array = np.empty(shape, dtype=object)
        array.fill(b"")
        return array
    return np.zeros(shape, dtype=DATATYPE_TO_NUMPY[spec.datatype])


def batch_sizes(info: ModelInfo, config: ModelConfig) -> list[int]:
    """Every batch size the batcher will form for this version (just [1] when unbatched)."""
    explicit = config.warmup.batch_sizes
    if explicit is not None:
        return sorted(set(explicit))
    if info.max_batch_size <= 0:
        return [1]
    return sorted({1, *config.batching.preferred_batch_sizes, info.max_batch_size})


def _sample(info: ModelInfo, config: ModelConfig, path: Path, rows: int) -> dict[str, np.ndarray] | None:
    name = config.warmup.file
    if name is None:
        return warmup_inputs(info, rows)
    file = (path / name).resolve()
    if path.resolve() not in file.parents or not file.is_file():
        raise ModelLoadError(f"[warmup] file {name!r} is not in the version folder")
    try:
        arrays = read_npz(file, names={spec.name for spec in info.inputs})
    except ValueError as exc:
        raise ModelLoadError(f"[warmup] file {name!r}: {exc}") from None
    missing = [s.name for s in info.inputs if s.name not in arrays]
    if missing:
        raise ModelLoadError(f"[warmup] file {name!r} lacks input(s) {missing}")
    if info.max_batch_size <= 0:
        return arrays
    return {k: np.resize(a, (rows, *a.shape[1:])) for k, a in arrays.items()}


def warm_up(backend: Backend, config: ModelConfig, path: Path) -> int:
    """Run every batch size once; returns how many runs were made (0 when inputs cannot be made up)."""
    if not config.warmup.enabled:
        return 0
    info = backend.info
    runs = 0
    for rows in batch_sizes(info, config):
        sample = _sample(info, config, path, rows)
        if sample is None:
            return runs
        try:
            backend.infer(sample)
        except Exception as exc:
            raise ModelLoadError(f"warm-up with {rows} row(s) failed: {type(exc).__name__}: {exc}") from exc
        runs += 1
    return runs
