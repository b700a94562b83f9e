"""New versions written into the repository and loaded through the loader's normal hot-swap path,
with the config sent beside them held in memory for that load (never written into model.toml, as
Triton does); a version or config that does not load is taken back out.

In a local folder each version is written under a hidden name with its SHA256SUMS, then renamed
into place in one os.rename (atomic on one filesystem, and refused when the version folder exists
and is not empty), so a reconcile pass never sees half a version and of two uploads of one version
exactly one wins; model.toml is replaced the same way. S3 uploads are in upload_s3.py. A version
that already exists is never overwritten (409): versions are immutable.

Uploads to one model run one at a time in this process (UploadLocks, held from reading model.toml
to the end of the load or the rollback); a rollback removes only what its own upload wrote, so a
model folder another upload wrote into is never deleted. Every version written by the server's
upload path carries UPLOAD_MARKER (registry/safety.py), which keeps the model's trust from
covering it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlserve.errors import Conflict, InvalidInput, ModelLoadError
from mlserve.registry.local import LocalStore
from mlserve.registry.safety import UPLOAD_MARKER, upload_marker
from mlserve.registry.served import ServedModel
from mlserve.registry.store import CHECKSUM_FILE, sha256_file
from mlserve.spec import MODEL_NAME, parse_model_config
from mlserve.spec.version import version_number

log = logging.getLogger("mlserve.registry")
TOML_FILE = "model.toml"


@dataclass(frozen=True, slots=True)
class Upload:
    """What one load-with-contents asks for: files by version, and the config (a model.toml table)
    that stands in for the model's model.toml from this load on."""

    model: str
    files: dict[int, dict[str, bytes]] = field(default_factory=dict)
    toml: dict[str, Any] | None = None


@dataclass(slots=True)
class Undo:
    """How to take an upload back out: the folders it made and the model.toml it replaced."""

    model_folder: Path
    created_model: bool = False
    versions: list[Path] = field(default_factory=list)
    old_toml: bytes | None = None
    wrote_toml: bool = False


class UploadLocks:
    """One asyncio lock per model name, held by every upload to that model; an entry lives only
    while someone holds or waits for it, so names that were tried once cost nothing after."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, model: str):
        lock, users = self._locks.get(model, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[model] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[model]
            if users == 1:
                del self._locks[model]
            else:
                self._locks[model] = (lock, users - 1)


def check_file_path(spec: str) -> tuple[int, str]:
    """'<version>/<relative path>' -> (version, path), refusing anything that could leave the folder
    or that no file system takes: control characters (NUL included), a part over 255 bytes, more
    than 16 parts, a path over 1024 bytes."""
    shown = spec if len(spec) <= 80 else spec[:80] + "..."
    version, _, rel = spec.partition("/")
    if version_number(version) is None:
        raise InvalidInput(f"file:{shown!r}: the path must start with a version folder (a positive integer)")
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts) \
            or "\\" in rel or rel in (CHECKSUM_FILE, UPLOAD_MARKER):
        raise InvalidInput(f"file:{shown!r}: not a plain relative file path inside the version folder")
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        raise InvalidInput(f"file:{shown!r}: a file name may not hold control characters")
    if len(parts) > 16 or len(rel.encode()) > 1024 or any(len(p.encode()) > 255 for p in parts):
        raise InvalidInput(f"file:{shown!r}: too long (at most 16 folders deep, 255 bytes a name, 1024 in all)")
    return int(version), rel


def toml_text(table: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """A model.toml table back to TOML: plain keys first, then [tables] and [[arrays of tables]]."""
    lines, sections = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            sections.append((f"[{_dotted(path + (key,))}]", key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            sections.extend((f"[[{_dotted(path + (key,))}]]", key, v) for v in value)
        else:
            lines.append(f"{json.dumps(key)} = {_value(value)}")
    for header, key, value in sections:
        lines.extend(["", header, *toml_text(value, path + (key,)).splitlines()])
    return "\n".join(lines) + "\n"


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(json.dumps(k) for k in path)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise InvalidInput(f"cannot write {value!r} into model.toml")


def checked_toml(table: dict[str, Any]) -> str:
    """The TOML text of a table that parses back to itself and is a valid model config."""
    text = toml_text(table)
    try:
        parse_model_config(tomllib.loads(text))
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"config: {exc}") from None
    return text


def write_upload(root: Path, upload: Upload, toml: str | None, uploaded_by: str | None = None) -> Undo:
    """Blocking: write the versions (hidden, then renamed into place) and model.toml. `uploaded_by`
    (the server's upload path) marks each version as uploaded; `mlserve push` (the operator) does not."""
    folder = root / upload.model
    undo = Undo(folder, created_model=not folder.exists())
    folder.mkdir(parents=True, exist_ok=True)
    marker = {} if uploaded_by is None else {UPLOAD_MARKER: upload_marker(uploaded_by)}
    try:
        for version, files in sorted(upload.files.items()):
            undo.versions.append(_write_version(folder, version, {**files, **marker}))
        if toml is not None:
            path = folder / TOML_FILE
            undo.old_toml = path.read_bytes() if path.is_file() else None
            _replace(path, toml.encode())
            undo.wrote_toml = True
    except BaseException:
        take_back(undo)
        raise
    return undo


def _write_version(folder: Path, version: int, files: dict[str, bytes]) -> Path:
    final = folder / str(version)
    if final.exists():
        raise _taken(folder.name, version)
    staging = folder / f".upload-{version}-{secrets.token_hex(4)}"
    try:
        for rel, data in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        sums = "".join(f"{sha256_file(staging / rel)}  {rel}\n" for rel in sorted(files))
        (staging / CHECKSUM_FILE).write_text(sums)
        try:
            os.rename(staging, final)  # fails when another writer's version folder got there first
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise _taken(folder.name, version) from None
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _taken(model: str, version: int) -> Conflict:
    return Conflict(f"model {model!r} already has version {version}; versions are never overwritten")


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def take_back(undo: Undo) -> None:
    """Blocking: remove what an upload wrote and put the old model.toml back."""
    for folder in undo.versions:
        shutil.rmtree(folder, ignore_errors=True)
    if undo.wrote_toml:
        path = undo.model_folder / TOML_FILE
        if undo.old_toml is None:
            path.unlink(missing_ok=True)
        else:
            _replace(path, undo.old_toml)
    if undo.created_model:
        with contextlib.suppress(OSError):  # not empty: another upload wrote into it, so it stays
            undo.model_folder.rmdir()


async def current_toml(store: Any, model: str) -> dict[str, Any]:
    """The model's model.toml as a table (empty for a new model or one without it)."""
    if not MODEL_NAME.fullmatch(model) or ".." in model:
        raise InvalidInput(f"{model!r} is not a valid model name ([a-z0-9][a-z0-9_.-]*, no '..')")
    try:
        text = await store.read_text(model, TOML_FILE)
    except Exception:  # a model folder that does not exist yet
        return {}
    try:
        return tomllib.loads(text) if text else {}
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{model}/{TOML_FILE} does not parse, so a config cannot be merged into it: {exc}") from None


async def publish(loader: Any, model: str, build: Callable[[dict[str, Any]], Upload], source: str) -> ServedModel:
    """Under the model's upload lock: read its model.toml, `build` the upload from it, write its
    files, load with its config (in memory only) through the hot-swap path, and take both back
    (files removed, the config held before restored) if it does not load."""
    async with loader.upload_locks.hold(model):
        upload = build(await current_toml(loader.store, model))
        return await _publish_locked(loader, upload, source)


async def _publish_locked(loader: Any, upload: Upload, source: str) -> ServedModel:
    if not upload.files and upload.toml is None:
        raise InvalidInput("load: nothing to write")
    if upload.toml is not None:
        checked_toml(upload.toml)  # a valid model.toml table, though it is never written
    previous = loader.override_of(upload.model)
    before = dict(loader.models[upload.model].versions) if upload.model in loader.models else {}
    undo = await _write(loader.store, upload, None, source) if upload.files else None
    try:
        served = await loader.control.load(upload.model, source, override=upload.toml)
        failed = _failed_versions(served, upload, before, upload.toml is not None or previous is not None)
    except ModelLoadError as exc:
        failed = {0: str(exc)}
    if failed:
        await _roll_back(loader, undo, upload.model, source, previous)
        reasons = "; ".join(f"version {v}: {r}" if v else r for v, r in sorted(failed.items()))
        raise ModelLoadError(f"upload to {upload.model!r} refused, nothing changed: {reasons}")
    log.info("model %s: uploaded version(s) %s%s (%s)", upload.model, sorted(upload.files) or "none",
             " with a config for this load" if upload.toml is not None else "", source)
    return served


def _failed_versions(served: ServedModel, upload: Upload, before: dict, forced: bool) -> dict[int, str]:
    """New versions that are not ready, and (after a config change) versions whose rebuild failed."""
    failed = {}
    for version in upload.files:
        sv = served.versions.get(version)
        if sv is None or not sv.is_ready:
            failed[version] = sv.reason if sv is not None else "not served by the model's version policy"
    if forced:
        for version, sv in served.versions.items():
            old = before.get(version)
            if version not in upload.files and old is not None and old.is_ready and (sv is old or not sv.is_ready):
                failed[version] = sv.reason or "did not load with the new config"
    return failed


async def _write(store: Any, upload: Upload, toml: str | None, source: str):
    if isinstance(store, LocalStore):
        return await asyncio.to_thread(write_upload, store.root, upload, toml, source)
    from mlserve.registry.s3 import S3Store
    from mlserve.registry.upload_s3 import write_upload_s3

    if isinstance(store, S3Store):
        return await write_upload_s3(store, upload.model, upload.files, toml, uploaded_by=source)
    raise InvalidInput(f"uploads are not supported into {store.describe()}")


async def _take_back(store: Any, undo) -> None:
    if isinstance(undo, Undo):
        await asyncio.to_thread(take_back, undo)
    else:
        from mlserve.registry.upload_s3 import take_back_s3

        await take_back_s3(store, undo)


async def _roll_back(loader: Any, undo, model: str, source: str, previous: dict[str, Any] | None) -> None:
    if undo is not None:
        await _take_back(loader.store, undo)
    if undo is not None and undo.created_model:
        await loader.reconcile(source)
    else:
        await loader.control.load(model, source, override=previous)
