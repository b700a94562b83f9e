"""Model version artifacts stored straight on S3: a tracking server whose artifact root is s3://
(`mlflow server --default-artifact-root s3://bucket/prefix --no-serve-artifacts`) hands out
`s3://` download URIs, and mlserve reads them with the S3 store's client and verified download
(each object's size and single-part ETag checked as it streams), so the bytes never pass through the
tracking server. Endpoint and region are the S3 store's settings (`[registry] s3_endpoint`,
`s3_region`); credentials the standard AWS ones.

Listing follows the same rules as the artifact proxy's: every relative path checked by
`check_object_key` (no '..', no absolute or hidden parts), at most MAX_FILES objects; S3 has no
links. The size limit and SHA256SUMS are checked by the MLflow store's fetch, as for the proxy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlserve.errors import ModelLoadError
from mlserve.registry.s3 import S3Object, S3Store, parse_s3_uri
from mlserve.registry.safety import check_object_key
from mlserve.registry.store import StoreError

MAX_FILES = 10_000


class S3Artifacts:
    """One S3 client per bucket that artifacts were found in, opened on first use."""

    def __init__(self, cache_dir: Path, endpoint_url: str | None, region: str | None) -> None:
        self._cache = cache_dir
        self._endpoint_url = endpoint_url
        self._region = region
        self._stores: dict[str, S3Store] = {}

    def _store(self, bucket: str) -> S3Store:
        if bucket not in self._stores:
            self._stores[bucket] = S3Store(f"s3://{bucket}", self._cache, self._endpoint_url, self._region)
        return self._stores[bucket]

    async def list(self, uri: str) -> dict[str, S3Object]:
        """Relative path -> object for every object under the s3:// folder `uri`."""
        try:
            bucket, prefix = parse_s3_uri(uri)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        if not prefix:
            raise StoreError(f"artifact location {uri!r} is a whole bucket, not a model's folder")
        try:
            listed = await self._store(bucket).list_objects(prefix)
        except Exception as exc:  # botocore's errors have no common base worth naming here
            raise StoreError(f"cannot list {uri}: {type(exc).__name__}: {exc}") from exc
        found: dict[str, S3Object] = {}
        for obj in listed:
            rel = obj.key[len(prefix):]
            if not rel or rel.endswith("/"):
                continue  # a folder marker
            try:
                check_object_key(rel)
            except ModelLoadError as exc:
                raise StoreError(f"refusing artifact s3://{bucket}/{obj.key}: {exc}") from None
            found[rel] = obj
            if len(found) > MAX_FILES:
                raise StoreError(f"{uri}: more than {MAX_FILES} artifact files")
        return found

    async def read_small(self, uri: str, obj: S3Object, limit: int) -> str:
        """A small object's text (MLmodel), refused past `limit` bytes before it is read."""
        if obj.size > limit:
            raise StoreError(f"s3://{parse_s3_uri(uri)[0]}/{obj.key} is {obj.size} bytes, over {limit}")
        with tempfile.TemporaryDirectory(prefix="mlserve-mlmodel-") as tmp:
            target = Path(tmp) / "MLmodel"
            await self.download(uri, obj, target)
            return target.read_text(errors="replace")

    async def download(self, uri: str, obj: S3Object, target: Path) -> None:
        await self._store(parse_s3_uri(uri)[0]).download(obj, target)

    async def close(self) -> None:
        for store in self._stores.values():
            await store.close()
        self._stores.clear()
