"""Batch job files on S3: `s3://bucket/key` inputs and outputs, and the mirror that lets another
replica take a job over from its checkpoint.

A job with s3:// files runs in a local working folder on the replica that runs it (the input is
downloaded there, its mtime set to the object's, so every replica computes the same checkpoint
identity). After every commit the mirror uploads what each working file grew by since the last one (an
immutable segment object per file and commit) and then `manifest.json`, which lists each file's segments
and size and holds the checkpoint itself: the manifest is written last, so it always names a state
every segment it lists is already in. A replica that takes the job over rebuilds the folder from the
manifest and resumes where that checkpoint says; segments written after it are never read. At the end
the output and errors files are uploaded whole (a PUT is atomic) and the mirror is removed.

Costs: one PUT per grown file and one for the manifest per commit (a chunk of about 4096 rows); the
manifest grows by one segment entry per file and commit. The working folder is on local disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from mlserve.errors import InvalidInput

_CHUNK_BYTES = 8 << 20
_MANIFEST = "manifest.json"


def is_s3(raw: Any) -> bool:
    return isinstance(raw, str) and raw.startswith("s3://")


def split_uri(raw: str, what: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key); InvalidInput naming `what` when it names no object."""
    bucket, _, key = raw.removeprefix("s3://").partition("/")
    if not bucket or not key or key.endswith("/") or "\x00" in key:
        raise InvalidInput(f"{what!r} must be s3://bucket/key naming one object, got {raw!r}")
    return bucket, key


def stage_uri(output: str) -> str:
    """Where the mirror of a job writing `output` lives: beside it."""
    return output + ".mlserve-job/"


@dataclass(frozen=True, slots=True)
class ObjectStat:
    size: int
    mtime_ns: int


class S3Files:
    """Reads and writes job files in S3 (any S3-compatible endpoint) through aiobotocore; region and
    credentials come from the standard AWS settings."""

    def __init__(self, endpoint_url: str | None = None, region: str | None = None) -> None:
        self._endpoint_url = endpoint_url
        self._region = region
        self._client = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    async def _s3(self):
        async with self._lock:
            if self._client is None:
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                config = AioConfig(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
                self._stack = contextlib.AsyncExitStack()
                self._client = await self._stack.enter_async_context(get_session().create_client(
                    "s3", endpoint_url=self._endpoint_url, region_name=self._region, config=config))
        return self._client

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._client = self._stack = None

    async def stat(self, uri: str) -> ObjectStat | None:
        bucket, key = split_uri(uri, "path")
        s3 = await self._s3()
        try:
            head = await s3.head_object(Bucket=bucket, Key=key)
        except s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        modified: datetime = head["LastModified"]
        return ObjectStat(int(head["ContentLength"]), int(modified.timestamp() * 1e9))

    async def download(self, uri: str, path: Path) -> None:
        """The object into `path` (streamed, never whole in memory), its mtime set to the object's."""
        stat = await self.stat(uri)
        if stat is None:
            raise InvalidInput(f"input {uri} does not exist")
        bucket, key = split_uri(uri, "input")
        s3 = await self._s3()
        answer = await s3.get_object(Bucket=bucket, Key=key)
        tmp = path.with_name(path.name + ".download")
        with open(tmp, "wb") as fh:
            async with answer["Body"] as body:
                while block := await body.read(_CHUNK_BYTES):
                    await asyncio.to_thread(fh.write, block)
        os.utime(tmp, ns=(stat.mtime_ns, stat.mtime_ns))
        os.replace(tmp, path)

    async def get_bytes(self, uri: str) -> bytes | None:
        bucket, key = split_uri(uri, "path")
        s3 = await self._s3()
        try:
            answer = await s3.get_object(Bucket=bucket, Key=key)
        except s3.exceptions.NoSuchKey:
            return None
        async with answer["Body"] as body:
            return await body.read()

    async def put_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_uri(uri, "path")
        await (await self._s3()).put_object(Bucket=bucket, Key=key, Body=data)

    async def upload(self, path: Path, uri: str) -> None:
        """A local file to one object: one PUT when small, a multipart upload (8 MiB parts) when not;
        the object appears whole or not at all."""
        bucket, key = split_uri(uri, "output")
        s3 = await self._s3()
        if path.stat().st_size <= _CHUNK_BYTES:
            await s3.put_object(Bucket=bucket, Key=key, Body=await asyncio.to_thread(path.read_bytes))
            return
        upload_id = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        try:
            parts = []
            with open(path, "rb") as fh:
                while block := await asyncio.to_thread(fh.read, _CHUNK_BYTES):
                    number = len(parts) + 1
                    answer = await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                                  Body=block)
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            await s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                               MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(Exception):
                await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    async def delete_prefix(self, uri: str) -> None:
        bucket, prefix = uri.removeprefix("s3://").partition("/")[::2]
        s3 = await self._s3()
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                await s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


class StageMirror:
    """The copy on S3 of one job's working folder (see the module docstring); `push()` after each
    commit, `restore()` before a run."""

    def __init__(self, files: S3Files, folder: Path, uri: str, checkpoint: Path, skip: Path) -> None:
        self._files = files
        self._folder = folder
        self._uri = uri
        self._checkpoint = checkpoint
        self._skip = skip
        self._commit = 0
        self._sizes: dict[str, int] = {}
        self._segments: dict[str, list[list[Any]]] = {}

    async def restore(self, local_identity: dict[str, str]) -> bool:
        """Rebuild the working folder from the manifest; False when there is none (a fresh start).
        The checkpoint's paths are this replica's working paths (`local_identity`)."""
        raw = await self._files.get_bytes(self._uri + _MANIFEST)
        if raw is None:
            return False
        manifest = orjson.loads(raw)
        self._commit = int(manifest["commit"])
        for rel, entry in manifest["files"].items():
            path = self._folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                for key, offset, length in entry["segments"]:
                    data = await self._files.get_bytes(self._uri + key)
                    if data is None or len(data) != length:
                        raise InvalidInput(f"the mirror of this job at {self._uri} lacks segment {key}")
                    fh.seek(offset)
                    fh.write(data)
                fh.truncate(int(entry["size"]))
            self._sizes[rel], self._segments[rel] = int(entry["size"]), entry["segments"]
        checkpoint = orjson.loads(manifest["checkpoint"])
        checkpoint.update(local_identity)
        self._checkpoint.write_bytes(orjson.dumps(checkpoint))
        return True

    async def push(self) -> None:
        self._commit += 1
        for path in sorted(self._folder.rglob("*")):
            if not path.is_file() or path.name.endswith((".tmp", ".download")) or path in (self._checkpoint,
                                                                                          self._skip):
                continue
            rel = str(path.relative_to(self._folder))
            size, before = path.stat().st_size, self._sizes.get(rel, 0)
            if size == before and rel in self._segments:
                continue
            start = before if size >= before else 0
            with open(path, "rb") as fh:
                fh.seek(start)
                data = fh.read(size - start)
            key = f"seg/{self._commit:08d}/{rel}"
            await self._files.put_bytes(self._uri + key, data)
            kept = self._segments.get(rel, []) if start else []
            self._segments[rel] = [*kept, [key, start, len(data)]]
            self._sizes[rel] = size
        manifest = {"commit": self._commit, "checkpoint": self._checkpoint.read_text(),
                    "files": {rel: {"size": self._sizes[rel], "segments": segs} for rel, segs in self._segments.items()}}
        await self._files.put_bytes(self._uri + _MANIFEST, orjson.dumps(manifest))


def reset_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
