"""The MLflow store: a model registry on an MLflow tracking server as a model repository.

    mlserve start --models mlflow://host:5000                  every registered model
    mlserve start --models 'mlflow://host:5000?models=a,b'     only these
    mlserve start --models 'mlflows://host?tag=serve'          every model carrying the tag `serve`

Each registered model is a model, its model versions (status READY) are its versions, numbers kept.
The version the alias (`registry.mlflow_alias`, default "champion") points at is the one served:
the model's model.toml is made here (mlflow_toml.py: `version_policy = { specific = [N] }`, the
tensors of that version's MLmodel signature, and its `mlserve.toml` tag, checked by the same parser),
so moving the alias goes through the loader's hot swap like any new version. A model with no such
alias is rejected at the scan and keeps serving what it served. A second alias
(`registry.mlflow_challenger_alias`, default "challenger") loads that version beside the champion
with the split at 100% champion (or the `[challenger]` table's split); `challenge()` tells
dataplane/mlflow_follower.py, which rolls it out and writes the outcome back with `set_alias`,
`delete_alias` and `set_version_tag`.

Why plain REST over aiohttp and not `mlflow`'s `MlflowClient`: the client pulls in the tracking
SDK (pandas, sqlalchemy, alembic, protobuf pins...) into the serving process for five GET requests,
and its calls block; the REST API is stable and documented, and aiohttp is already here.

Artifacts come straight from S3 when a version's location is s3:// (mlflow_s3.py), else through the
tracking server's artifact proxy (`mlflow-artifacts:` locations, `mlflow server --serve-artifacts`,
the default): listed recursively, each file streamed into a hidden
staging folder in 1 MiB chunks with its size checked against the listing and every path checked by
`check_object_key`, SHA256SUMS verified when present, the total refused past `max_artifact_bytes`
before anything is downloaded, and only then renamed into the cache (the S3 store's rules). A
flavor whose model lives in a subfolder (pytorch, sentence_transformers, transformers) has its
files moved up beside MLmodel before publishing, so the engines find them where they look.

Unreachable: every call fails fast and `refresh()` backs off (0.5 s doubling to 30 s) so a poll
during an outage costs nothing; the loader keeps serving what it has, and recovery is logged.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from mlserve.config import RegistryConfig
from mlserve.errors import ModelLoadError, ModelNotFound
from mlserve.registry.mlflow_toml import Challenge, ChallengerSpec, model_toml
from mlserve.registry.mlflow_paths import flatten_flavor, parse_mlflow_uri, proxy_path
from mlserve.registry.mlflow_s3 import S3Artifacts
from mlserve.registry.s3 import S3Object, _publish, prune_cache
from mlserve.registry.safety import check_object_key
from mlserve.registry.store import StoreError, VersionStat, fingerprint_of, verify_checksums
from mlserve.spec import MODEL_NAME
from mlserve.spec.mlmodel import MAX_MLMODEL_BYTES, MLMODEL_FILE, MlModel, parse_mlmodel

log = logging.getLogger("mlserve.registry.mlflow")

TOML_TAG = "mlserve.toml"
"""A model version tag holding model.toml text for that version (checked by the model.toml parser)."""

_API = "/api/2.0/mlflow"
_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
_CHUNK_BYTES = 1 << 20
_MAX_JSON_BYTES = 16 << 20
_MAX_MODELS = 10_000
_MAX_VERSIONS = 10_000
_MAX_FILES = 10_000
_MAX_DEPTH = 16
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class _Version:
    number: int
    tags: dict[str, str]


@dataclass(slots=True)
class _Model:
    name: str
    versions: dict[int, _Version] = field(default_factory=dict)
    served: int | None = None
    """The version the alias points at (None: no alias)."""
    challenger: int | None = None
    """The version the challenger alias points at (None: no such alias)."""
    spec: ChallengerSpec | None = None
    """The champion's [challenger] table, as its model.toml was last made."""


@dataclass(frozen=True, slots=True)
class _Listing:
    """A version's artifacts as the proxy (or S3) lists them (versions are immutable: listed once)."""

    root: str
    """Artifact-proxy path of the model's folder, or its s3:// URI."""
    files: dict[str, int]
    """Relative path -> size."""
    mlmodel: MlModel
    objects: dict[str, S3Object] | None = None
    """On S3: relative path -> object (read straight from the bucket); None: through the proxy."""


class MlflowStore:
    """A model repository on an MLflow tracking server's model registry, through its REST API."""

    kind = "mlflow"

    def __init__(self, uri: str, cache_dir: Path, config: RegistryConfig | None = None) -> None:
        config = config or RegistryConfig(models=uri)
        self.uri = uri
        self.target = parse_mlflow_uri(uri)
        self.alias = config.mlflow_alias
        self.challenger_alias = config.mlflow_challenger_alias
        self.keep_versions = config.cache_versions
        self.max_bytes = config.max_artifact_bytes
        self._s3 = S3Artifacts(cache_dir / "mlflow-s3", config.s3_endpoint or None, config.s3_region or None)
        self._headers = {"Authorization": f"Bearer {config.mlflow_token}"} if config.mlflow_token else {}
        self._cache = cache_dir / "mlflow" / _cache_name(self.target.base_url)
        self._models: dict[str, _Model] = {}
        self._listings: dict[tuple[str, int], _Listing] = {}
        self._session: aiohttp.ClientSession | None = None
        self._num_failures = 0
        self._retry_at = 0.0
        self._down_since = 0.0

    @property
    def cache_name(self) -> str:
        """The folder name this tracking server's files are kept under."""
        return self._cache.name

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5, sock_read=60)
            self._session = aiohttp.ClientSession(timeout=timeout, headers=self._headers)
        return self._session

    # ---- listing -----------------------------------------------------------------------------

    async def refresh(self, model: str | None = None) -> None:
        """Registered models, their READY versions and where the alias points. While the server is
        unreachable, calls inside the backoff window fail at once without contacting it."""
        now = time.monotonic()
        if self._num_failures and now < self._retry_at:
            raise StoreError(f"{self.describe()} unreachable ({self._num_failures} failed attempt(s)); "
                             f"next try in {self._retry_at - now:.1f} s")
        try:
            found = await self._list_all(model)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self._note_failure(exc)
            raise StoreError(f"cannot reach {self.describe()}: {type(exc).__name__}: {exc}") from exc
        self._note_success()
        if model is None:
            self._models = found
            self._listings = {key: listing for key, listing in self._listings.items()
                              if key[0] in found and key[1] in found[key[0]].versions}
        else:
            self._models.pop(model, None)
            self._models.update(found)

    def _note_failure(self, exc: BaseException) -> None:
        if not self._num_failures:
            self._down_since = time.monotonic()
        self._num_failures += 1
        delay = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** (self._num_failures - 1))
        self._retry_at = time.monotonic() + delay
        log.warning("MLflow %s unreachable (attempt %d: %s: %s); serving what is loaded, retrying in %.1f s",
                    self.target.base_url, self._num_failures, type(exc).__name__, exc, delay)

    def _note_success(self) -> None:
        if self._num_failures:
            log.info("MLflow %s reachable again after %d failed attempt(s) over %.1f s", self.target.base_url,
                     self._num_failures, time.monotonic() - self._down_since)
        self._num_failures = 0

    async def _list_all(self, only: str | None) -> dict[str, _Model]:
        registered = await self._search("registered-models/search", "registered_models", {}, _MAX_MODELS)
        found: dict[str, _Model] = {}
        for item in registered:
            name = item.get("name")
            if not isinstance(name, str) or (only is not None and name != only):
                continue
            if not self.target.wants(name, _tags(item)):
                continue
            found[name] = _Model(name)
        for record in found.values():
            if MODEL_NAME.fullmatch(record.name):  # others are rejected by the scan, unread
                await self._read_model(record)
        return found

    async def _read_model(self, record: _Model) -> None:
        escaped = record.name.replace("'", "\\'")
        items = await self._search("model-versions/search", "model_versions", {"filter": f"name='{escaped}'"},
                                   _MAX_VERSIONS)
        for item in items:
            number = _version_number(item.get("version"))
            if number is not None and item.get("status", "READY") == "READY" and item.get("name") == record.name:
                record.versions[number] = _Version(number, _tags(item))
        record.served = await self._alias(record.name, self.alias)
        record.challenger = await self._alias(record.name, self.challenger_alias)

    async def _alias(self, name: str, alias: str) -> int | None:
        status, body = await self._get_json(f"{_API}/registered-models/alias", {"name": name, "alias": alias},
                                            missing_ok=True)
        return _version_number((body.get("model_version") or {}).get("version")) if status == 200 else None

    async def _search(self, endpoint: str, key: str, params: dict[str, str], limit: int) -> list[dict]:
        items: list[dict] = []
        token = ""
        while True:
            query = {**params, "max_results": "1000" if key == "registered_models" else "10000"}
            if token:
                query["page_token"] = token
            _, body = await self._get_json(f"{_API}/{endpoint}", query)
            page = body.get(key) or []
            items.extend(i for i in page if isinstance(i, dict))
            if len(items) > limit:
                raise StoreError(f"{self.describe()}: more than {limit} {key.replace('_', ' ')}")
            token = body.get("next_page_token") or ""
            if not token or not page:
                return items

    async def _get_json(self, path: str, params: dict[str, str], missing_ok: bool = False) -> tuple[int, dict]:
        async with self._http().get(self.target.base_url + path, params=params) as response:
            raw = await _read_bounded(response, _MAX_JSON_BYTES)
            if len(raw) > _MAX_JSON_BYTES:
                raise StoreError(f"{self.describe()}: answer to {path} is over {_MAX_JSON_BYTES} bytes")
            if missing_ok and _is_missing(response.status, raw):
                return 404, {}
            if response.status != 200:
                raise StoreError(f"{self.describe()}: {path} answered {response.status}: {raw[:300]!r}")
            try:
                body = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError as exc:
                raise StoreError(f"{self.describe()}: {path} answered with bad JSON: {exc}") from None
            if not isinstance(body, dict):
                raise StoreError(f"{self.describe()}: {path} answered with {type(body).__name__}, not an object")
            return 200, body

    async def list_models(self) -> list[str]:
        return sorted(self._models)

    def _model(self, name: str) -> _Model:
        record = self._models.get(name)
        if record is None:
            raise ModelNotFound(f"no registered model {name!r} in {self.describe()}")
        return record

    async def list_versions(self, model: str) -> list[str]:
        return [str(v) for v in sorted(self._model(model).versions)]

    async def read_text(self, model: str, name: str) -> str | None:
        """model.toml, made from the alias' version: see the module note."""
        if name != "model.toml":
            return None
        record = self._model(model)
        if record.served is None or record.served not in record.versions:
            raise StoreError(f"registered model {model!r} has no @{self.alias} alias on a READY version; "
                             f"set one to serve it")
        listing = await self._listing(model, record.served)
        challenger = record.challenger if record.challenger in record.versions else None
        text, record.spec = model_toml(record.served, record.versions[record.served].tags.get(TOML_TAG),
                                       listing.mlmodel, f"{model} version {record.served} tag {TOML_TAG}", challenger)
        return text

    def challenge(self, model: str) -> Challenge | None:
        """The model's champion and challenger (a READY version other than the champion) as last
        listed, with the champion's [challenger] settings; None without one."""
        record = self._models.get(model)
        if record is None or record.spec is None or record.served is None or record.challenger is None \
                or record.challenger == record.served or record.challenger not in record.versions:
            return None
        return Challenge(record.served, record.challenger, record.spec)

    # ---- writing back ------------------------------------------------------------------------------

    async def alias_version(self, model: str, alias: str) -> int | None:
        """Where `alias` points now, read from the server (not the last listing)."""
        return await self._call(lambda: self._alias(model, alias), f"read @{alias} of {model}")

    async def set_alias(self, model: str, alias: str, version: int) -> None:
        await self.call_api("POST", "registered-models/alias", {"name": model, "alias": alias, "version": str(version)})

    async def delete_alias(self, model: str, alias: str) -> None:
        await self.call_api("DELETE", "registered-models/alias", {"name": model, "alias": alias})

    async def set_version_tag(self, model: str, version: int, key: str, value: str) -> None:
        await self.call_api("POST", "model-versions/set-tag",
                         {"name": model, "version": str(version), "key": key, "value": value})

    async def call_api(self, method: str, endpoint: str, body: dict[str, Any]) -> dict:
        """One write to the REST API (`endpoint` under /api/2.0/mlflow/); StoreError names the call
        and the server's answer."""
        return await self._call(lambda: self._request(method, endpoint, body), f"{method} {endpoint}")

    async def get_api(self, endpoint: str, params: dict[str, str], missing_ok: bool = False) -> tuple[int, dict]:
        """One read of the REST API: (200, body), or (404, {}) for a missing thing with `missing_ok`."""
        return await self._call(lambda: self._get_json(f"{_API}/{endpoint}", params, missing_ok), f"GET {endpoint}")

    async def upload_artifact(self, path: str, data: Any) -> None:
        """PUT one file (bytes or an open file, streamed) through the artifact proxy at `path`."""
        check_object_key(path)
        url = f"{self.target.base_url}{_ARTIFACTS}/{quote(path)}"

        async def put() -> None:
            async with self._http().put(url, data=data) as response:
                if response.status != 200:
                    text = (await response.content.read(300)).decode(errors="replace")
                    raise StoreError(f"{self.describe()}: upload of {path} answered {response.status}: {text}")

        await self._call(put, f"upload of {path}")

    def version_tags(self, model: str, version: int) -> dict[str, str]:
        """A version's tags, as last listed ({} when unknown)."""
        record = self._models.get(model)
        found = record.versions.get(version) if record is not None else None
        return dict(found.tags) if found is not None else {}

    def champion(self, model: str) -> int | None:
        """The version the serving alias points at, as last listed."""
        record = self._models.get(model)
        return record.served if record is not None else None

    async def _call(self, make, what: str):
        try:
            return await make()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise StoreError(f"{self.describe()}: {what} failed: {type(exc).__name__}: {exc}") from exc

    async def _request(self, method: str, endpoint: str, body: dict[str, Any]) -> dict:
        # a JSON body for DELETE too: MLflow's server reads only GET's fields from the query string
        async with self._http().request(method, f"{self.target.base_url}{_API}/{endpoint}", data=orjson.dumps(body),
                                        headers={"Content-Type": "application/json"}) as response:
            raw = await _read_bounded(response, _MAX_JSON_BYTES)
            if response.status != 200:
                raise StoreError(f"{self.describe()}: {method} {endpoint} answered {response.status}: {raw[:300]!r}")
            try:
                answer = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                answer = {}
            return answer if isinstance(answer, dict) else {}

    # ---- one version ---------------------------------------------------------------------------

    async def stat(self, model: str, version: int) -> VersionStat:
        listing = await self._listing(model, version)
        objects = listing.objects or {}
        return fingerprint_of({rel: (size, objects[rel].etag if rel in objects else listing.root)
                               for rel, size in listing.files.items()})

    async def _listing(self, model: str, version: int) -> _Listing:
        if version not in self._model(model).versions:
            raise ModelNotFound(f"registered model {model!r} has no READY version {version} in {self.describe()}")
        key = (model, version)
        if key not in self._listings:
            try:
                self._listings[key] = await self._list_version(model, version)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise StoreError(f"cannot list {model} version {version} on {self.describe()}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        return self._listings[key]

    async def _list_version(self, model: str, version: int) -> _Listing:
        _, body = await self._get_json(f"{_API}/model-versions/get-download-uri",
                                       {"name": model, "version": str(version)})
        if str(body.get("artifact_uri", "")).startswith("s3://"):
            return await self._list_s3(model, version, str(body["artifact_uri"]).rstrip("/"))
        root = proxy_path(str(body.get("artifact_uri", "")))
        files: dict[str, int] = {}
        await self._walk(root, "", files, 0)
        if MLMODEL_FILE not in files:
            raise ModelLoadError(f"{model} version {version}: no {MLMODEL_FILE} file in its artifacts ({root})")
        text = await self._read_small(f"{root}/{MLMODEL_FILE}")
        return _Listing(root, files, parse_mlmodel(text, f"{model} version {version} {MLMODEL_FILE}"))

    async def _list_s3(self, model: str, version: int, uri: str) -> _Listing:
        objects = await self._s3.list(uri)
        if MLMODEL_FILE not in objects:
            raise ModelLoadError(f"{model} version {version}: no {MLMODEL_FILE} file in its artifacts ({uri})")
        text = await self._s3.read_small(uri, objects[MLMODEL_FILE], MAX_MLMODEL_BYTES)
        return _Listing(uri, {rel: obj.size for rel, obj in objects.items()},
                        parse_mlmodel(text, f"{model} version {version} {MLMODEL_FILE}"), objects)

    async def _walk(self, root: str, rel: str, files: dict[str, int], depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise StoreError(f"{root}/{rel}: artifacts nested deeper than {_MAX_DEPTH} folders")
        _, body = await self._get_json(_ARTIFACTS, {"path": f"{root}/{rel}".rstrip("/")})
        for item in body.get("files") or []:
            name = str(item.get("path", "")).rsplit("/", 1)[-1]
            child = f"{rel}/{name}" if rel else name
            try:
                check_object_key(child)  # a plain relative path: no '..', no absolute or hidden parts
            except ModelLoadError as exc:
                raise StoreError(f"refusing artifact {root}/{child}: {exc}") from None
            if item.get("is_dir"):
                await self._walk(root, child, files, depth + 1)
            else:
                size = item.get("file_size")
                if not isinstance(size, int) or size < 0:
                    raise StoreError(f"artifact {root}/{child} is listed with no size")
                files[child] = size
                if len(files) > _MAX_FILES:
                    raise StoreError(f"{root}: more than {_MAX_FILES} artifact files")

    async def _read_small(self, path: str) -> str:
        async with self._http().get(f"{self.target.base_url}{_ARTIFACTS}/{quote(path)}") as response:
            raw = await _read_bounded(response, MAX_MLMODEL_BYTES)
            if response.status != 200:
                raise StoreError(f"{self.describe()}: artifact {path} answered {response.status}")
            return raw.decode(errors="replace")

    async def fetch(self, model: str, version: int) -> Path:
        listing = await self._listing(model, version)
        stat = await self.stat(model, version)
        if stat.num_bytes > self.max_bytes:
            raise ModelLoadError(f"{model} version {version}: artifacts are {stat.num_bytes} bytes, over the limit "
                                 f"of {self.max_bytes} bytes; not downloaded")
        final = self._cache / model / f"{version}-{stat.fingerprint[:16]}"
        if final.is_dir():
            await asyncio.to_thread(prune_cache, final, self.keep_versions)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{version}-partial-"))
        try:
            for rel, size in sorted(listing.files.items()):
                if listing.objects is not None:
                    await self._s3.download(listing.root, listing.objects[rel], staging / rel)
                else:
                    await self._download(f"{listing.root}/{rel}", size, staging / rel)
            await asyncio.to_thread(verify_checksums, staging)
            await asyncio.to_thread(flatten_flavor, staging, listing.mlmodel)
            await asyncio.to_thread(_publish, staging, final)
            await asyncio.to_thread(prune_cache, final, self.keep_versions)
        finally:
            if staging.exists():
                await asyncio.to_thread(shutil.rmtree, staging, True)
        log.info("fetched %s version %d from %s (%d files, %d bytes) into %s", model, version, self.describe(),
                 len(listing.files), stat.num_bytes, final)
        return final

    async def _download(self, path: str, size: int, target: Path) -> None:
        """Stream one artifact to `target`; more or fewer bytes than listed is an error."""
        target.parent.mkdir(parents=True, exist_ok=True)
        got = 0
        try:
            async with self._http().get(f"{self.target.base_url}{_ARTIFACTS}/{quote(path)}") as response:
                if response.status != 200:
                    raise StoreError(f"answered {response.status}")
                with open(target, "wb") as fh:
                    while chunk := await response.content.read(_CHUNK_BYTES):
                        got += len(chunk)
                        if got > size:
                            raise StoreError(f"more than the {size} bytes listed")
                        await asyncio.to_thread(fh.write, chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, StoreError) as exc:
            raise StoreError(f"download of {path} from {self.describe()} failed: {type(exc).__name__}: {exc}") from exc
        if got != size:
            raise StoreError(f"{path}: got {got} bytes, listed as {size}")

    def describe(self) -> str:
        return f"{self.target.base_url} (MLflow model registry, @{self.alias})"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None
        await self._s3.close()


# ---- plain helpers -------------------------------------------------------------------------------


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or its first `limit + 1` bytes when it is longer (the caller refuses those)."""
    chunks, total = [], 0
    while total <= limit and (chunk := await response.content.read(min(_CHUNK_BYTES, limit + 1 - total))):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _is_missing(status: int, raw: bytes) -> bool:
    """404, or MLflow's answer for an alias that is not set: 400 INVALID_PARAMETER_VALUE "... not found"."""
    if status == 404:
        return True
    if status != 400:
        return False
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("error_code") in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST") \
        and "not found" in str(body.get("message", ""))


def _tags(item: dict[str, Any]) -> dict[str, str]:
    tags = item.get("tags") or []
    return {str(t.get("key")): str(t.get("value", "")) for t in tags if isinstance(t, dict)}


def _version_number(raw: Any) -> int | None:
    text = str(raw) if raw is not None else ""
    return int(text) if text.isdigit() and text.isascii() and int(text) > 0 and str(int(text)) == text else None


def _cache_name(base_url: str) -> str:
    """A folder name for one tracking server: host_port plus path, nothing that leaves the folder."""
    parts = urlsplit(base_url)
    return "".join(c if c.isalnum() or c in "-." else "_" for c in f"{parts.netloc}{parts.path}") or "mlflow"
