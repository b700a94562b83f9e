"""Finding what to optimize: a version folder in a local repository (or one artifact file), its
settings, its tensors and the validation set."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np

from mlserve.config import RegistryConfig
from mlserve.engine.base import find_artifact
from mlserve.errors import InvalidInput, ModelNotFound
from mlserve.monitor.npz import read_npz
from mlserve.optimize.base import Source
from mlserve.registry.opening import Alone, Trust, VersionFiles, open_version, version_backend_name
from mlserve.spec import (
    DATATYPE_TO_NUMPY,
    ModelConfig,
    version_number,
    read_model_config,
)

SOURCE_BACKENDS = ("onnx", "torchscript", "torch_export")
_DEFAULT_DATA = ("reference.npz", "warmup.npz")


def version_numbers(model_dir: Path) -> list[int]:
    """The model's version folders as numbers (the repository scan's rule: registry/repository.py)."""
    return sorted(n for p in model_dir.iterdir() if p.is_dir() and (n := version_number(p.name)) is not None)


def open_source(models: Path | None, model: str, version: int | None, file: Path | None,
                data: Path | None, work: Path, trust_repository: bool = False, trust_uploads: bool = False) -> Source:
    """The source version (the newest unless `version` is given), loaded once to learn its tensors."""
    if file is not None:
        folder, config = work / "source", _file_config(models, model)
        folder.mkdir(parents=True)
        shutil.copy2(file, folder / file.name)
    else:
        if models is None:
            raise InvalidInput("give --models or --file")
        model_dir = models / model
        if not model_dir.is_dir():
            raise ModelNotFound(f"no model folder {model!r} in {models}")
        numbers = version_numbers(model_dir)
        if not numbers:
            raise ModelNotFound(f"model {model!r} has no versions")
        version = version if version is not None else numbers[-1]
        if version not in numbers:
            raise ModelNotFound(f"model {model!r} has no version {version}")
        folder, config = model_dir / str(version), read_model_config(model_dir / "model.toml")
    max_bytes = RegistryConfig().max_artifact_bytes
    backend = version_backend_name(f"{model}/{version}", config, folder, max_bytes)
    if backend not in SOURCE_BACKENDS:
        raise InvalidInput(f"optimize takes ONNX, TorchScript or torch.export models, not {backend!r}")
    # the same rule as serving: an uploaded code-bearing version only where the server loads uploaded code
    trust = Trust(model=trust_repository or config.trusted, uploads=trust_uploads)
    info = _probe(VersionFiles(f"{model}/{version}", config, folder, trust, max_bytes))
    values = _read_npz(data if data is not None else _default_data(folder))
    labels = values.pop("labels", None)
    _check_data(values, info.inputs)
    return Source(model, None if file else version, folder, backend, config, info.inputs, info.outputs,
                  values, labels, onnx_path=_onnx_file(folder) if backend == "onnx" else None, work=work,
                  trust=trust)


def _file_config(models: Path | None, model: str) -> ModelConfig:
    if models is not None and (models / model / "model.toml").is_file():
        return read_model_config(models / model / "model.toml")
    return ModelConfig()


def _probe(files: VersionFiles):
    """The source's tensors, read by opening it the way the server does (on the CPU, not warmed up:
    only its description is wanted)."""
    runtime = asyncio.run(open_version(files, Alone("cpu"), warm=False))
    try:
        return runtime.info
    finally:
        runtime.close()


def _onnx_file(folder: Path) -> Path:
    return find_artifact(folder, ("*.onnx",))


def _default_data(folder: Path) -> Path:
    for name in _DEFAULT_DATA:
        if (folder / name).is_file():
            return folder / name
    raise InvalidInput(f"no validation set: give --data val.npz (or put reference.npz in {folder})")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        return read_npz(path)  # capped: reference.npz may have come by upload
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: not a readable .npz ({exc})") from None


def _check_data(values: dict[str, np.ndarray], inputs) -> None:
    names = {s.name for s in inputs}
    missing, extra = names - set(values), set(values) - names
    if missing or extra:
        raise InvalidInput(f"the validation set must hold exactly the inputs {sorted(names)} (and 'labels'); "
                           f"missing {sorted(missing)}, unknown {sorted(extra)}")
    sizes = {len(a) for a in values.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise InvalidInput("every validation array needs the same, non-zero number of rows")
    for spec in inputs:  # an .npz of float64 rows is read as the FP32 the model takes
        expected = np.dtype(DATATYPE_TO_NUMPY[spec.datatype])
        if values[spec.name].dtype != expected:
            values[spec.name] = values[spec.name].astype(expected)
