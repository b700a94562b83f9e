"""Uploading a local repository folder to S3 with aiobotocore (the tests' side of the S3 store)."""

from __future__ import annotations

import asyncio
from pathlib import Path


async def _upload(endpoint: str, bucket: str, prefix: str, root: Path, create: bool) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        if create:
            await s3.create_bucket(Bucket=bucket)
        for path in sorted(root.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(root)}".lstrip("/")
                await s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


def upload(endpoint: str, bucket: str, prefix: str, root: Path, create: bool = False) -> None:
    """Copy every file under `root` to s3://bucket/prefix/<relative path>."""
    asyncio.run(_upload(endpoint, bucket, prefix, root, create))


async def read_keys(endpoint: str, prefix: str, bucket: str = "models") -> dict[str, bytes]:
    """Every object under s3://bucket/prefix: key -> contents."""
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        listed = await s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        out = {}
        for item in listed.get("Contents", []):
            response = await s3.get_object(Bucket=bucket, Key=item["Key"])
            async with response["Body"] as body:
                out[item["Key"]] = await body.read()
        return out
