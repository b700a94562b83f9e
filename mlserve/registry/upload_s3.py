"""Uploads into an S3 repository. S3 has no rename, so a version's SHA256SUMS goes up first: a
reconcile pass that lists the version before its last file has landed fails the checksum check
(a file it names is missing) and loads nothing, never half a version; the load that follows the
upload sees it whole.

That first put is conditional (If-None-Match: *): it is the version's claim, so of two uploads of
one version (two replicas, or a server and `mlserve push`) exactly one writes files and the other
gets Conflict (409) having written nothing. Taking an upload back deletes only the keys it wrote
and puts model.toml back."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from mlserve.errors import Conflict, ModelNotFound
from mlserve.registry.s3 import S3Store
from mlserve.registry.safety import UPLOAD_MARKER, upload_marker
from mlserve.registry.store import CHECKSUM_FILE

TOML_FILE = "model.toml"


@dataclass(slots=True)
class S3Undo:
    """The keys an upload wrote (relative to the model folder) and the model.toml it replaced."""

    model: str
    created_model: bool = False
    written: list[str] = field(default_factory=list)
    old_toml: str | None = None
    wrote_toml: bool = False


async def write_upload_s3(store: S3Store, model: str, files: dict[int, dict[str, bytes]],
                          toml: str | None, uploaded_by: str | None = None) -> S3Undo:
    """Write the versions (claim first, then the upload marker when `uploaded_by` is given, then
    the files) and model.toml; on any failure take back what was written."""
    await store.refresh(model)
    try:
        existing = set(await store.list_versions(model))
    except ModelNotFound:
        existing = set()
    undo = S3Undo(model, created_model=not existing)
    taken = sorted(v for v in files if str(v) in existing)
    if taken:
        raise Conflict(f"model {model!r} already has version {taken[0]}; versions are never overwritten")
    marker = {} if uploaded_by is None else {UPLOAD_MARKER: upload_marker(uploaded_by)}
    try:
        for version, version_files in sorted(files.items()):
            await _write_version(store, undo, version, {**marker, **version_files})
        if toml is not None:
            undo.old_toml = await store.read_text(model, TOML_FILE)
            await store.put(model, TOML_FILE, toml.encode())
            undo.wrote_toml = True
    except BaseException:
        await take_back_s3(store, undo)
        raise
    await store.refresh(model)
    return undo


async def _write_version(store: S3Store, undo: S3Undo, version: int, files: dict[str, bytes]) -> None:
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {rel}\n" for rel, data in sorted(files.items()))
    try:
        await store.put(undo.model, f"{version}/{CHECKSUM_FILE}", sums.encode(), if_absent=True)
    except Conflict:
        raise Conflict(f"model {undo.model!r} already has version {version} (or another upload is writing it); "
                       "versions are never overwritten") from None
    undo.written.append(f"{version}/{CHECKSUM_FILE}")
    for rel, data in files.items():  # the marker first: no listing shows the artifact without it
        await store.put(undo.model, f"{version}/{rel}", data)
        undo.written.append(f"{version}/{rel}")


async def take_back_s3(store: S3Store, undo: S3Undo) -> None:
    for rel in reversed(undo.written):
        await store.delete(undo.model, rel)
    if undo.wrote_toml:
        if undo.old_toml is None:
            await store.delete(undo.model, TOML_FILE)
        else:
            await store.put(undo.model, TOML_FILE, undo.old_toml.encode())
    await store.refresh(undo.model)
