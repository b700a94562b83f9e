"""The repository a `--models` URI names: a local folder, s3://bucket/prefix or mlflow://host:port."""

from __future__ import annotations

from pathlib import Path

from mlserve.config import RegistryConfig
from mlserve.registry.local import LocalStore
from mlserve.registry.store import Store


def open_store(uri: str, registry: RegistryConfig | None = None) -> Store:
    """The repository a `--models` URI names: a local folder, s3://bucket/prefix or mlflow://host:port."""
    if uri.startswith("s3://"):
        from mlserve.registry.s3 import S3Store

        registry = registry or RegistryConfig(models=uri)
        cache = Path(registry.cache_dir).expanduser() if registry.cache_dir else Path.home() / ".cache" / "mlserve"
        return S3Store(uri, cache, registry.s3_endpoint or None, registry.s3_region or None,
                       keep_versions=registry.cache_versions)
    if uri.startswith(("mlflow://", "mlflows://")):
        from mlserve.registry.mlflow import MlflowStore

        registry = registry or RegistryConfig(models=uri)
        cache = Path(registry.cache_dir).expanduser() if registry.cache_dir else Path.home() / ".cache" / "mlserve"
        return MlflowStore(uri, cache, registry)
    if "://" in uri:
        raise ValueError(f"unsupported model repository {uri!r}: give a local folder, s3://bucket/prefix "
                         "or mlflow://host:port")
    return LocalStore(Path(uri))
