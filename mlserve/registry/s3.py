"""The S3 store: a repository under s3://bucket/prefix/, fetched into a local cache folder.

A version is downloaded into a hidden staging folder next to its cache folder, one file at a
time in 1 MiB chunks (written and hashed on a thread, never held whole in memory), checked
(size, the MD5 that a single-part ETag is, and SHA256SUMS when the version has one), and only
then renamed into place. A half-downloaded version is therefore never visible to the loader,
and a cached one is reused as long as its fingerprint (keys, sizes, ETags) is unchanged.

The cache keeps `keep_versions` folders per model: every fetch marks its folder as just used, and
the least recently used others are removed. A loaded version does not need its folder (engines
read their files at load); only reloading it (rollback, pin) fetches it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlserve.errors import Conflict, ModelLoadError, ModelNotFound
from mlserve.registry.safety import check_object_key
from mlserve.registry.store import StoreError, VersionStat, fingerprint_of, verify_checksums

log = logging.getLogger("mlserve.registry.s3")

_CHUNK_BYTES = 1 << 20
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


@dataclass(frozen=True, slots=True)
class S3Object:
    """One object as listed."""

    key: str
    size: int
    etag: str


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix/")."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"s3 URI {uri!r} names no bucket")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3Store:
    """A model repository in an S3 bucket (any S3-compatible endpoint), through aiobotocore.

    Region and credentials come from the standard AWS settings (environment, ~/.aws); the
    endpoint URL may be given for S3-compatible servers.
    """

    kind = "s3"

    def __init__(self, uri: str, cache_dir: Path, endpoint_url: str | None = None, region: str | None = None,
                 keep_versions: int = 4) -> None:
        self.uri = uri
        self.keep_versions = keep_versions
        self.bucket, self.prefix = parse_s3_uri(uri)
        self._endpoint_url = endpoint_url
        self._region = region
        self._cache = cache_dir / self.bucket / self.prefix
        self._objects: dict[str, dict[str, S3Object]] = {}
        self._client = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def _s3(self):
        if self._client is None:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            config = AioConfig(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"})
            self._stack = contextlib.AsyncExitStack()
            self._client = await self._stack.enter_async_context(
                get_session().create_client("s3", endpoint_url=self._endpoint_url, region_name=self._region,
                                            config=config)
            )
        return self._client

    async def refresh(self, model: str | None = None) -> None:
        prefix = self.prefix if model is None else f"{self.prefix}{model}/"
        try:
            objects = await self.list_objects(prefix)
        except Exception as exc:
            raise StoreError(f"cannot list {self.uri}: {type(exc).__name__}: {exc}") from exc
        found: dict[str, dict[str, S3Object]] = {}
        for obj in objects:
            name, _, rel = obj.key[len(self.prefix):].partition("/")
            if rel and not rel.endswith("/"):
                found.setdefault(name, {})[rel] = obj
        if model is None:
            self._objects = found
        else:
            self._objects[model] = found.get(model, {})

    async def list_objects(self, prefix: str) -> list[S3Object]:
        """Every object under `prefix` (also used by the MLflow store for artifacts on S3)."""
        s3 = await self._s3()
        objects = []
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                objects.append(S3Object(item["Key"], int(item["Size"]), item["ETag"].strip('"').lower()))
        return objects

    async def list_models(self) -> list[str]:
        return sorted(name for name in self._objects if not name.startswith("."))

    async def list_versions(self, model: str) -> list[str]:
        files = self._objects.get(model)
        if not files:
            raise ModelNotFound(f"no model folder {model!r} in the repository")
        return sorted({rel.partition("/")[0] for rel in files if "/" in rel})

    async def read_text(self, model: str, name: str) -> str | None:
        obj = self._objects.get(model, {}).get(name)
        if obj is None:
            return None
        s3 = await self._s3()
        try:
            response = await s3.get_object(Bucket=self.bucket, Key=obj.key)
            async with response["Body"] as body:
                return (await body.read()).decode()
        except Exception as exc:
            raise StoreError(f"cannot read s3://{self.bucket}/{obj.key}: {exc}") from exc

    async def delete(self, model: str, rel: str) -> None:
        s3 = await self._s3()
        await s3.delete_object(Bucket=self.bucket, Key=f"{self.prefix}{model}/{rel}")

    def _version_files(self, model: str, version: int) -> dict[str, S3Object]:
        head = f"{version}/"
        files = {rel[len(head):]: obj for rel, obj in self._objects.get(model, {}).items() if rel.startswith(head)}
        if not files:
            raise ModelNotFound(f"model {model!r} has no version {version} in the repository")
        return files

    async def stat(self, model: str, version: int) -> VersionStat:
        files = self._version_files(model, version)
        return fingerprint_of({rel: (obj.size, obj.etag) for rel, obj in files.items()})

    async def fetch(self, model: str, version: int) -> Path:
        files = self._version_files(model, version)
        stat = fingerprint_of({rel: (obj.size, obj.etag) for rel, obj in files.items()})
        final = self._cache / model / f"{version}-{stat.fingerprint[:16]}"
        if final.is_dir():
            await asyncio.to_thread(prune_cache, final, self.keep_versions)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{version}-partial-"))
        try:
            for rel, obj in sorted(files.items()):
                try:
                    check_object_key(obj.key, self.prefix)  # no '..', no absolute or empty parts
                except ModelLoadError as exc:
                    raise StoreError(f"refusing key {obj.key!r}: {exc}") from None
                await self.download(obj, staging / rel)
            await asyncio.to_thread(verify_checksums, staging)
            await asyncio.to_thread(_publish, staging, final)
            await asyncio.to_thread(prune_cache, final, self.keep_versions)
        finally:
            if staging.exists():
                await asyncio.to_thread(shutil.rmtree, staging, True)
        log.info("fetched s3://%s/%s%s/%d (%d files, %d bytes) into %s", self.bucket, self.prefix, model, version,
                 len(files), stat.num_bytes, final)
        return final

    async def download(self, obj: S3Object, target: Path) -> None:
        """Stream one object to `target`, checking its size and (single-part) ETag on the way."""
        target.parent.mkdir(parents=True, exist_ok=True)
        md5, size = hashlib.md5(usedforsecurity=False), 0
        s3 = await self._s3()
        try:
            response = await s3.get_object(Bucket=self.bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
            with open(target, "wb") as fh:
                async with response["Body"] as body:
                    while chunk := await body.read(_CHUNK_BYTES):
                        await asyncio.to_thread(_write_chunk, fh, md5, chunk)
                        size += len(chunk)
        except Exception as exc:
            raise StoreError(f"download of s3://{self.bucket}/{obj.key} failed: {type(exc).__name__}: {exc}") from exc
        if size != obj.size:
            raise StoreError(f"s3://{self.bucket}/{obj.key}: got {size} bytes, listed as {obj.size}")
        if _MD5_ETAG.match(obj.etag) and md5.hexdigest() != obj.etag:
            raise StoreError(f"s3://{self.bucket}/{obj.key}: MD5 {md5.hexdigest()} does not match ETag {obj.etag}")

    async def put(self, model: str, rel: str, body: bytes, if_absent: bool = False) -> None:
        """Write one file of a model folder (uploads: registry/upload_s3.py). `if_absent`: a
        conditional put (If-None-Match: *) that raises Conflict when the key exists, so of two
        writers exactly one creates it."""
        key = f"{self.prefix}{model}/{rel}"
        check_object_key(key, self.prefix)
        s3 = await self._s3()
        condition = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            await s3.put_object(Bucket=self.bucket, Key=key, Body=body, **condition)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if if_absent and code in _CONDITION_FAILED:
                raise Conflict(f"s3://{self.bucket}/{key} exists or is being written by another upload") from None
            if if_absent and code == "NotImplemented":  # an S3-compatible server without conditional writes
                log.warning("%s does not support conditional writes; %s was written unconditionally, so two "
                            "uploads of one version from two replicas could race", self.describe(), key)
                return await self.put(model, rel, body)
            raise StoreError(f"upload of s3://{self.bucket}/{key} failed: {type(exc).__name__}: {exc}") from exc

    def describe(self) -> str:
        return self.uri + (f" at {self._endpoint_url}" if self._endpoint_url else "")

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._client = self._stack = None


def prune_cache(current: Path, keep: int) -> list[Path]:
    """Mark `current` (a model's cached version folder) as just used, then remove the least
    recently used of its siblings past `keep` folders in all. Staging folders (hidden) are left to
    the fetch that owns them. Returns what was removed."""
    os.utime(current)
    folders = [p for p in current.parent.iterdir() if p.is_dir() and not p.name.startswith(".") and p != current]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = folders[max(0, keep - 1):]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
        log.info("S3 cache: removed %s (more than %d version folders of this model cached)", folder, keep)
    return removed


def _write_chunk(fh, md5, chunk: bytes) -> None:
    fh.write(chunk)
    md5.update(chunk)


def _publish(staging: Path, final: Path) -> None:
    """Rename the verified folder into place; another fetch may have won the race, which is fine."""
    for path in staging.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    try:
        os.rename(staging, final)
    except OSError:
        if not final.is_dir():
            raise
