"""Registering a model folder in an MLflow model registry as a new model version (what `mlserve push`
and `mlserve optimize` do with an mlflow:// repository).

MLflow's way, through its REST API: a run is created (in the source version's experiment when there
is one, else the default experiment), the folder's files are uploaded through the tracking server's
artifact proxy under the run's `model/` (every path checked like a download's: plain relative
paths, plain files, no links), the run is finished, and a model version is created from
`<run artifacts>/model` with the given tags. A folder with no `MLmodel` gets one that names what
mlserve serves it with (the `onnx` flavor for a model.onnx), so the registry can list it and mlserve
can serve it; one that has an MLmodel keeps it.

Nothing is registered until every file is uploaded: a failure midway leaves a failed run with
some artifacts, never a model version pointing at half a folder.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlserve.errors import InvalidInput
from mlserve.registry.mlflow import MlflowStore, proxy_path
from mlserve.registry.safety import check_object_key
from mlserve.spec.mlmodel import MLMODEL_FILE

log = logging.getLogger("mlserve.registry.mlflow")

MAX_TAG_VALUE = 5000
"""MLflow's limit on a model version tag's value (longer values are refused by the server)."""
_MAX_FILES = 10_000


@dataclass(frozen=True, slots=True)
class Registration:
    """What to register: the folder, and what the new version says about itself."""

    model: str
    folder: Path
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    source_version: int | None = None
    """The version this one was made from (its run's experiment is reused, and the lineage tagged)."""


def folder_files(folder: Path) -> list[str]:
    """The folder's files as checked relative paths; a link or anything but a plain file is refused."""
    if not folder.is_dir():
        raise InvalidInput(f"{folder} is not a folder")
    found = []
    for parent, dirs, names in os.walk(folder):
        for name in sorted(dirs + names):
            path = Path(parent) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                raise InvalidInput(f"{path} is a symbolic link; only the folder's own files are registered")
            if name in names:
                if not stat.S_ISREG(path.lstat().st_mode):
                    raise InvalidInput(f"{path} is not a plain file")
                check_object_key(rel)
                found.append(rel)
    if len(found) > _MAX_FILES:
        raise InvalidInput(f"{folder}: more than {_MAX_FILES} files")
    return sorted(found)


def default_mlmodel(folder: Path) -> str | None:
    """An MLmodel for a folder that has none: the onnx flavor for model.onnx (None otherwise)."""
    if (folder / MLMODEL_FILE).exists() or not (folder / "model.onnx").is_file():
        return None
    return ("artifact_path: model\nflavors:\n  onnx:\n    data: model.onnx\n    providers: [CPUExecutionProvider]\n"
            "  python_function:\n    data: model.onnx\n    loader_module: mlflow.onnx\n")


async def register(store: MlflowStore, what: Registration) -> int:
    """Upload `what.folder` as a run's `model/` and register it; returns the new version number."""
    files = await asyncio.to_thread(folder_files, what.folder)
    mlmodel = default_mlmodel(what.folder)
    if not files:
        raise InvalidInput(f"{what.folder} holds no files")
    source_run = await _source_run(store, what)
    experiment = source_run.get("experiment_id", "0") if source_run else "0"
    run_tags = {"mlserve.registered_for": what.model}
    if source_run:
        run_tags["mlserve.source_run_id"] = source_run["run_id"]
    run = (await store.call_api("POST", "runs/create", {
        "experiment_id": experiment, "start_time": int(time.time() * 1000), "run_name": f"mlserve-{what.model}",
        "tags": [{"key": k, "value": v} for k, v in run_tags.items()]}))["run"]["info"]
    run_id, root = run["run_id"], proxy_path(run["artifact_uri"]) + "/model"
    try:
        for rel in files:
            await _upload(store, f"{root}/{rel}", what.folder / rel)
        if mlmodel is not None:
            await _upload_bytes(store, f"{root}/{MLMODEL_FILE}", mlmodel.encode())
    except BaseException:
        await _end_run(store, run_id, "FAILED")
        raise
    await _end_run(store, run_id, "FINISHED")
    tags = {k: v[:MAX_TAG_VALUE] for k, v in what.tags.items()}
    if what.source_version is not None:
        tags["mlserve.source_version"] = str(what.source_version)
    body = {"name": what.model, "source": f"{run['artifact_uri']}/model", "run_id": run_id,
            "tags": [{"key": k, "value": v} for k, v in tags.items()], "description": what.description}
    if not await _has_model(store, what.model):
        await store.call_api("POST", "registered-models/create", {"name": what.model})
    created = (await store.call_api("POST", "model-versions/create", body))["model_version"]
    version = int(created["version"])
    log.info("registered %s version %d in %s (%d files, run %s)", what.model, version, store.describe(), len(files),
             run_id)
    return version


async def _source_run(store: MlflowStore, what: Registration) -> dict[str, Any] | None:
    if what.source_version is None:
        return None
    _, body = await store.get_api("model-versions/get", {"name": what.model, "version": str(what.source_version)})
    run_id = (body.get("model_version") or {}).get("run_id")
    if not run_id:
        return None
    _, run = await store.get_api("runs/get", {"run_id": run_id})
    info = (run.get("run") or {}).get("info") or {}
    return {"run_id": run_id, "experiment_id": str(info.get("experiment_id", "0"))}


async def _has_model(store: MlflowStore, name: str) -> bool:
    status, _ = await store.get_api("registered-models/get", {"name": name}, missing_ok=True)
    return status == 200


async def _end_run(store: MlflowStore, run_id: str, status: str) -> None:
    await store.call_api("POST", "runs/update", {"run_id": run_id, "status": status,
                                                 "end_time": int(time.time() * 1000)})


async def _upload(store: MlflowStore, path: str, source: Path) -> None:
    with open(source, "rb") as fh:  # streamed: aiohttp reads the file in chunks
        await store.upload_artifact(path, fh)


async def _upload_bytes(store: MlflowStore, path: str, data: bytes) -> None:
    await store.upload_artifact(path, data)
