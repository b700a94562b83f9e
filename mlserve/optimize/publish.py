"""Publishing the winner as the next version of the model in a local repository.

The version folder is written under a hidden name and renamed into place in one step, so a scan
never sees half a version. It holds the artifact, the source version's other files (warm-up and
drift reference data), `optimization.json` (the source, the passes, every candidate's figures and
the backend that serves it) and `SHA256SUMS` over all of them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mlserve.engine.base import VERSION_BACKEND_FILE
from mlserve.optimize.source import version_numbers
from mlserve.registry.store import CHECKSUM_FILE, sha256_file

_ARTIFACT_SUFFIXES = (".onnx", ".pt", ".ts", ".pt2", ".plan", ".data")
_NOT_CARRIED = {CHECKSUM_FILE, VERSION_BACKEND_FILE}


def is_artifact(path: Path) -> bool:
    return path.suffix in _ARTIFACT_SUFFIXES


def publish(model_dir: Path, source_folder: Path, artifact_folder: Path, record: dict) -> int:
    """Write the next version; returns its number."""
    version = max(version_numbers(model_dir), default=0) + 1
    staging = model_dir / f".optimize-{version}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        _fill(staging, source_folder, artifact_folder, {**record, "version": version})
        os.rename(staging, model_dir / str(version))
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; else a partial version
    return version


def _fill(staging: Path, source_folder: Path, artifact_folder: Path, record: dict) -> None:
    shutil.copytree(artifact_folder, staging)
    for item in source_folder.iterdir():
        if item.is_file() and not is_artifact(item) and item.name not in _NOT_CARRIED:
            shutil.copy2(item, staging / item.name)
    (staging / VERSION_BACKEND_FILE).write_text(json.dumps(record, indent=2) + "\n")
    _write_checksums(staging)


def _write_checksums(folder: Path) -> None:
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}"
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != CHECKSUM_FILE]
    (folder / CHECKSUM_FILE).write_text("\n".join(lines) + "\n")
