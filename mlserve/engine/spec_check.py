"""Reconciling what an artifact says about its tensors with what model.toml declares."""

from __future__ import annotations

from mlserve.errors import ModelLoadError
from mlserve.spec import ModelConfig, TensorSpec


def _merge_one(declared: tuple[TensorSpec, ...], found: tuple[TensorSpec, ...], what: str) -> tuple[TensorSpec, ...]:
    if not declared:
        return found
    if not found:
        return declared
    by_name = {s.name: s for s in found}
    for spec in declared:
        actual = by_name.get(spec.name)
        if actual is None:
            raise ModelLoadError(f"model.toml declares {what} {spec.name!r}, but the model has {sorted(by_name)}")
        if actual.datatype != spec.datatype:
            raise ModelLoadError(
                f"model.toml declares {what} {spec.name!r} as {spec.datatype}, but the model takes {actual.datatype}"
            )
        if actual.shape and len(actual.shape) != len(spec.shape):
            raise ModelLoadError(
                f"model.toml declares {what} {spec.name!r} with shape {list(spec.shape)}, "
                f"but the model has {list(actual.shape)}"
            )
    return declared


def merge_specs(
    config: ModelConfig, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """model.toml may name tensors more tightly than the artifact; it may not contradict it."""
    inputs = _merge_one(config.inputs, inputs, "input")
    outputs = _merge_one(config.outputs, outputs, "output")
    if config.batching.max_batch_size > 0:
        for spec in inputs:
            if not spec.shape or spec.shape[0] != -1:
                raise ModelLoadError(
                    f"input {spec.name!r} has shape {list(spec.shape)}: batching (max_batch_size > 0) needs a "
                    "variable first dimension; set max_batch_size = 0 in model.toml to serve it unbatched"
                )
    return inputs, outputs
