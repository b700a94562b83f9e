"""`mlserve push`: write a model artifact into a repository as a new version, offline (no server).

The same writer as the load API's upload: the version folder is written under a hidden name with
its SHA256SUMS and renamed into place, so a running server's next reconcile (SIGHUP, poll, index
call) sees either the whole version or nothing.

Into an mlflow:// repository the artifact is registered as a new model version of the registered
model `--name` (registry/mlflow_publish.py: a run's artifacts, then the version; MLflow numbers it),
with `--config`'s text as its `mlserve.toml` tag and `--alias` pointed at it when given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
import tomllib
from pathlib import Path

from mlserve.errors import InvalidInput, ModelLoadError
from mlserve.spec import MODEL_NAME, parse_model_config
from mlserve.registry.upload import Upload, check_file_path, write_upload


def add_push_parser(sub) -> None:
    push = sub.add_parser("push", help="write a model artifact into a repository as a new version")
    push.add_argument("--models", required=True, help="model repository folder, s3://bucket/prefix or "
                                                      "mlflow://host:port (registers a new model version)")
    push.add_argument("--s3-endpoint", help="endpoint URL for an s3:// repository (S3-compatible servers)")
    push.add_argument("--name", required=True, help="model name")
    push.add_argument("artifact", type=Path, help="a model file, or a folder whose files form the version")
    push.add_argument("--version", type=int, help="version number (default: one past the highest)")
    push.add_argument("--config", type=Path, help="a model.toml to install with it (replaces the model's; "
                                                  "with mlflow:// the new version's mlserve.toml tag)")
    push.add_argument("--alias", help="mlflow:// only: point this alias (champion, challenger) at the new version")


def _files(artifact: Path) -> dict[str, bytes]:
    """The artifact's files. In a folder, a symbolic link (to a file or a folder) or anything but a
    plain file is refused by name: a link could carry a file from outside the folder into the
    repository (and on to S3), and a FIFO or device would hang or stream forever."""
    if artifact.is_file():
        return {artifact.name: artifact.read_bytes()}
    if not artifact.is_dir():
        raise InvalidInput(f"{artifact} is neither a file nor a folder")
    files = {}
    for folder, dirs, names in os.walk(artifact):
        for name in sorted(dirs + names):
            path = Path(folder) / name
            if path.is_symlink():
                raise InvalidInput(f"{path} is a symbolic link; push copies only the folder's own files")
            if name in names:
                files[str(path.relative_to(artifact))] = _read_plain(path)
    return dict(sorted(files.items()))


def _read_plain(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInput(f"{path} is not a plain file")
        return fh.read()


def _next_version(folder: Path) -> int:
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return max(versions, default=0) + 1


def run_push(args: argparse.Namespace) -> int:
    try:
        if not MODEL_NAME.fullmatch(args.name):
            raise InvalidInput(f"{args.name!r} is not a valid model name ([a-z0-9][a-z0-9_.-]*)")
        files = _files(args.artifact)
        toml = None
        if args.models.startswith(("mlflow://", "mlflows://")):
            where = _push_mlflow(args)
            print(f"registered {where}")
            return 0
        if args.alias is not None:
            raise InvalidInput("--alias is for an mlflow:// repository")
        if args.config is not None:
            toml = args.config.read_text()
            parse_model_config(tomllib.loads(toml))
        if args.models.startswith("s3://"):
            where = asyncio.run(_push_s3(args, files, toml))
        else:
            where = _push_local(args, files, toml)
    except (InvalidInput, ValueError, OSError, tomllib.TOMLDecodeError, ModelLoadError) as exc:
        print(f"mlserve push: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {where} ({len(files)} file(s) and SHA256SUMS)")
    return 0


def _checked(version: int, files: dict[str, bytes]) -> dict[int, dict[str, bytes]]:
    return {version: {check_file_path(f"{version}/{rel}")[1]: data for rel, data in files.items()}}


def _push_local(args: argparse.Namespace, files: dict[str, bytes], toml: str | None) -> str:
    root = Path(args.models)
    if "://" in args.models or not root.is_dir():
        raise InvalidInput(f"{args.models} is not a local repository folder (or an s3:// URI)")
    version = args.version or _next_version(root / args.name)
    write_upload(root, Upload(args.name, _checked(version, files)), toml)
    return str(root / args.name / str(version))


async def _push_s3(args: argparse.Namespace, files: dict[str, bytes], toml: str | None) -> str:
    from mlserve.errors import ModelNotFound
    from mlserve.registry.s3 import S3Store
    from mlserve.registry.upload_s3 import write_upload_s3

    store = S3Store(args.models, Path.home() / ".cache" / "mlserve", args.s3_endpoint or None)
    try:
        version = args.version
        if version is None:
            await store.refresh(args.name)
            try:
                existing = [int(v) for v in await store.list_versions(args.name) if v.isdigit()]
            except ModelNotFound:
                existing = []
            version = max(existing, default=0) + 1
        await write_upload_s3(store, args.name, _checked(version, files), toml)
    finally:
        await store.close()
    return f"{args.models.rstrip('/')}/{args.name}/{version}"


def _push_mlflow(args: argparse.Namespace) -> str:
    from mlserve.config import load_config
    from mlserve.registry.mlflow import TOML_TAG, MlflowStore
    from mlserve.registry.mlflow_publish import Registration, register
    from mlserve.registry.mlflow_toml import ALIAS, check_tag

    if args.version is not None:
        raise InvalidInput("--version: MLflow numbers a registered model's versions itself")
    if args.alias is not None and not ALIAS.fullmatch(args.alias):
        raise InvalidInput(f"--alias must be letters, digits, '_' or '-', got {args.alias!r}")
    if not args.artifact.is_dir():
        raise InvalidInput(f"{args.artifact}: an mlflow:// push registers a folder (the version's files)")
    tags = {}
    if args.config is not None:
        tags[TOML_TAG] = args.config.read_text()
        check_tag(tags[TOML_TAG], str(args.config))
    registry = load_config(overrides={"registry": {"models": args.models}}).registry
    store = MlflowStore(args.models, Path.home() / ".cache" / "mlserve", registry)

    async def push() -> int:
        try:
            version = await register(store, Registration(args.name, args.artifact, tags, "pushed by mlserve push"))
            if args.alias is not None:
                await store.set_alias(args.name, args.alias, version)
            return version
        finally:
            await store.close()

    version = asyncio.run(push())
    return f"{args.name} version {version} in {args.models}" + (f" (@{args.alias})" if args.alias else "")
