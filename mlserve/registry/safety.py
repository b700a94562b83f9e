"""Checks a version folder passes before any engine reads it: no file that leaves the repository
through a symlink, nothing over the size limit, only safe names, and no artifact that can run code
unless the repository or the model is trusted.

TorchScript archives carry code that runs when they are read and called, and torch.export archives
fall back to full pickle (`torch.load(weights_only=False)`) for weights marked as pickled: both
can run anything. They load only with --trust-repository or `trusted = true` in the model's
model.toml; ONNX, TensorRT plans read by their own runtimes and safetensors stay allowed.

A version that arrived by upload (Triton's load API with `file:` contents) carries UPLOAD_MARKER,
written by the upload path and listed in its SHA256SUMS. Its code-bearing artifacts are not
covered by the model's or the repository's trust: they load only with `[registry] trust_uploads`
(--trust-uploads), because with it any admin key can run code in the server.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path, PurePosixPath

from mlserve.errors import ModelLoadError

_SAFE_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=@-]*$")


def check_version_folder(path: Path, max_bytes: int) -> int:
    """Total bytes of the folder's files; raises ModelLoadError on a file that resolves outside the
    repository (the folder's grandparent) or on a total over `max_bytes`."""
    folder = path.resolve()
    repository = folder.parents[1] if len(folder.parents) > 1 else folder
    total = 0
    for item in sorted(path.rglob("*")):
        resolved = item.resolve()
        if resolved != repository and repository not in resolved.parents:
            raise ModelLoadError(f"{item.relative_to(path)} resolves outside the model repository")
        if resolved.is_file():
            total += resolved.stat().st_size
        if total > max_bytes:
            raise ModelLoadError(f"artifacts are over the limit of {max_bytes} bytes; not loaded")
    return total


CODE_RUNNING_BACKENDS = {"torchscript": "TorchScript", "torch_export": "torch.export (.pt2)",
                         "aoti": "AOTInductor (compiled native code)"}


UPLOAD_MARKER = "mlserve-upload.json"
"""Written into every version the upload path writes (locally and on S3): who uploaded it."""


def upload_marker(source: str) -> bytes:
    """UPLOAD_MARKER's contents: who uploaded the version, and when."""
    return json.dumps({"source": source, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()


def is_uploaded(folder: Path) -> bool:
    """The version folder arrived by upload (its marker is there; a symlink counts too)."""
    return os.path.lexists(folder / UPLOAD_MARKER)


def check_version_trusted(backend: str, folder: Path, is_model_trusted: bool, trust_uploads: bool) -> None:
    """check_trusted for one version folder: an uploaded one needs trust_uploads, whatever the
    model's `trusted` or --trust-repository say."""
    kind = CODE_RUNNING_BACKENDS.get(backend)
    if kind is not None and is_uploaded(folder) and not trust_uploads:
        raise ModelLoadError(
            f"{kind} artifacts can run code when loaded and this version arrived by upload; uploaded code "
            "loads only with [registry] trust_uploads = true (--trust-uploads), whatever the model's "
            "trusted setting says"
        )
    if not is_uploaded(folder):
        check_trusted(backend, is_model_trusted)


def check_trusted(backend: str, is_trusted: bool) -> None:
    """Refuse, before any file is opened, a backend whose artifacts can run code when untrusted."""
    kind = CODE_RUNNING_BACKENDS.get(backend)
    if kind is not None and not is_trusted:
        raise ModelLoadError(
            f"{kind} artifacts can run code when loaded and this model is not trusted; "
            "start with --trust-repository or set trusted = true in its model.toml"
        )


def check_object_key(key: str, prefix: str = "") -> str:
    """A remote store's object key, relative to the repository prefix: every part a plain name, no
    `..`, no absolute path, no empty or hidden parts. Returns the relative key."""
    if prefix and not key.startswith(prefix):
        raise ModelLoadError(f"object key {key!r} is outside the repository prefix {prefix!r}")
    relative = key[len(prefix):].lstrip("/") if prefix else key
    parts = PurePosixPath(relative).parts
    if (key.startswith("/") and not prefix) or "//" in relative or "\\" in relative or "\0" in relative or not parts:
        raise ModelLoadError(f"object key {key!r} is not a plain relative path")
    for part in parts:
        if not _SAFE_KEY_PART.fullmatch(part) or part in (".", ".."):
            raise ModelLoadError(f"object key {key!r} has an unsafe part {part!r}")
    return relative
