"""An MLflow model's `MLmodel` file, read once: which flavor it was saved as, which mlserve backend
serves that flavor, and its tensor signature as v2 tensor specs.

The file is YAML; `yaml.safe_load` builds plain dicts and lists only (no Python objects), and the
text is bounded before it is parsed. A flavor mlserve cannot serve, or a signature dtype with no v2
datatype, is refused by name, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlserve.errors import ModelLoadError
from mlserve.spec.tensor import TensorSpec

MLMODEL_FILE = "MLmodel"
MAX_MLMODEL_BYTES = 1 << 20

FLAVOR_BACKENDS: dict[str, str] = {
    "onnx": "onnx",
    "pytorch": "torchscript",  # runs code when read: the same trust rule as a TorchScript file
    "sentence_transformers": "embedding",
    "transformers": "llm",
}
"""MLflow flavor -> mlserve backend, in the order a model saved with several is matched."""

_GENERIC_FLAVORS = frozenset({"python_function"})

# MLflow tensor-spec dtypes are numpy dtype names.
_DTYPES: dict[str, str] = {
    "bool": "BOOL", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "object": "BYTES", "bytes": "BYTES", "str": "BYTES",
}


@dataclass(frozen=True, slots=True)
class MlModel:
    """What mlserve reads from an MLmodel file."""

    flavors: dict[str, dict[str, Any]]
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    @property
    def flavor(self) -> str:
        """The flavor mlserve serves this model as; ModelLoadError naming the flavors when none fits."""
        for name in FLAVOR_BACKENDS:
            if name in self.flavors:
                return name
        named = sorted(set(self.flavors) - _GENERIC_FLAVORS) or sorted(self.flavors) or ["none"]
        raise ModelLoadError(
            f"MLflow flavor {', '.join(named)} cannot be served; mlserve serves the flavors "
            f"{', '.join(FLAVOR_BACKENDS)}")

    @property
    def backend(self) -> str:
        return FLAVOR_BACKENDS[self.flavor]

    def backend_in(self, folder: Path) -> str:
        """The backend for the files in `folder`: a pytorch flavor saved as pt2 (torch.export) is
        torch_export, which runs code when read too."""
        if self.flavor == "pytorch" and (folder / "model.pt2").is_file():
            return "torch_export"
        return self.backend

    def flavor_conf(self) -> dict[str, Any]:
        return self.flavors[self.flavor]


def parse_mlmodel(text: str, where: str = MLMODEL_FILE) -> MlModel:
    """An MLmodel file's text; ModelLoadError naming `where` and the bad part."""
    if len(text.encode()) > MAX_MLMODEL_BYTES:
        raise ModelLoadError(f"{where}: over {MAX_MLMODEL_BYTES} bytes")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{where}: not YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{where}: not a mapping")
    flavors = raw.get("flavors")
    if not isinstance(flavors, dict) or not all(isinstance(v, dict) or v is None for v in flavors.values()):
        raise ModelLoadError(f"{where}: 'flavors' must be a mapping of flavor name to its settings")
    flavors = {str(k): dict(v or {}) for k, v in flavors.items()}
    signature = raw.get("signature") or {}
    if not isinstance(signature, dict):
        raise ModelLoadError(f"{where}: 'signature' must be a mapping")
    return MlModel(flavors, _tensors(signature.get("inputs"), "input", where),
                   _tensors(signature.get("outputs"), "output", where))


def read_mlmodel(folder: Path) -> MlModel | None:
    """The folder's MLmodel, or None when it has none (blocking: run it off the loop)."""
    path = folder / MLMODEL_FILE
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_MLMODEL_BYTES:
        raise ModelLoadError(f"{path}: over {MAX_MLMODEL_BYTES} bytes")
    return parse_mlmodel(path.read_text(errors="replace"), str(path))


def _tensors(raw: Any, what: str, where: str) -> tuple[TensorSpec, ...]:
    """A signature's inputs or outputs (a JSON string in the YAML). Column-based signatures (pandas
    columns) describe no tensors: they are skipped and the artifact's own tensor specs apply."""
    if raw is None:
        return ()
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise ModelLoadError(f"{where}: signature {what}s are not JSON: {exc}") from None
    if not isinstance(items, list):
        raise ModelLoadError(f"{where}: signature {what}s must be a list")
    if not any(isinstance(i, dict) and i.get("type") == "tensor" for i in items):
        return ()
    specs = []
    for index, item in enumerate(items):
        specs.append(_tensor(item, f"{where}: signature {what} {index}"))
    return tuple(specs)


def _tensor(item: Any, where: str) -> TensorSpec:
    if not isinstance(item, dict) or item.get("type") != "tensor" or not isinstance(item.get("tensor-spec"), dict):
        raise ModelLoadError(f"{where}: a tensor signature mixes in a non-tensor entry {item!r}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"{where}: a tensor needs a name to be served by name (got {name!r})")
    spec = item["tensor-spec"]
    dtype, shape = spec.get("dtype"), spec.get("shape")
    datatype = _DTYPES.get(dtype) if isinstance(dtype, str) else None
    if datatype is None:
        raise ModelLoadError(f"{where} ({name!r}): dtype {dtype!r} has no v2 datatype; known: {', '.join(_DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1
                                               for d in shape):
        raise ModelLoadError(f"{where} ({name!r}): shape {shape!r} must be a list of integers >= -1")
    return TensorSpec(name, datatype, tuple(shape))
