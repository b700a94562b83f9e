"""MLflow's addresses and folder layouts: the mlflow:// URI, artifact locations behind the tracking
server's proxy, and a flavor's model files moved to where mlserve's engines look for them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from mlserve.errors import ModelLoadError
from mlserve.registry.safety import check_object_key
from mlserve.spec.mlmodel import MlModel

_QUERY_KEYS = ("models", "tag")


@dataclass(frozen=True, slots=True)
class MlflowTarget:
    """A parsed mlflow:// URI: the server's base URL and which registered models to serve."""

    base_url: str
    models: tuple[str, ...] = ()
    tag: str = ""
    """Serve only registered models carrying this tag (`key` or `key=value`)."""

    def wants(self, name: str, tags: dict[str, str]) -> bool:
        if self.models and name not in self.models:
            return False
        if not self.tag:
            return True
        key, has_value, value = self.tag.partition("=")
        return key in tags and (not has_value or tags[key] == value)


def parse_mlflow_uri(uri: str) -> MlflowTarget:
    """mlflow://host:port[/path][?models=a,b][&tag=key[=value]] (mlflows:// for HTTPS)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("mlflow", "mlflows") or not parts.netloc:
        raise ValueError(f"not an mlflow://host:port URI: {uri!r}")
    if parts.username or parts.password:
        raise ValueError("put the MLflow token in MLFLOW_TRACKING_TOKEN or registry.mlflow_token, not in the URI")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        raise ValueError(f"{uri!r}: unknown query parameter(s) {', '.join(unknown)}; known: {', '.join(_QUERY_KEYS)}")
    if any(len(values) > 1 for values in query.values()):
        raise ValueError(f"{uri!r}: each query parameter may be given once")
    models = tuple(m for m in query.get("models", [""])[0].split(",") if m)
    tag = query.get("tag", [""])[0]
    scheme = "https" if parts.scheme == "mlflows" else "http"
    return MlflowTarget(f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}", models, tag)


def proxy_path(artifact_uri: str) -> str:
    """`mlflow-artifacts:/1/abc/artifacts/model` (or with a host) -> `1/abc/artifacts/model`."""
    if not artifact_uri.startswith("mlflow-artifacts:"):
        raise ModelLoadError(
            f"artifact location {artifact_uri!r} is not behind the tracking server's artifact proxy "
            "(mlflow-artifacts:) nor on S3 (s3://); start `mlflow server` with --serve-artifacts (the default)")
    rest = artifact_uri.removeprefix("mlflow-artifacts:")
    if rest.startswith("//"):
        rest = "/" + rest[2:].partition("/")[2]
    path = rest.strip("/")
    try:
        check_object_key(path)
    except ModelLoadError as exc:
        raise ModelLoadError(f"artifact location {artifact_uri!r}: {exc}") from None
    return path


def flatten_flavor(folder: Path, mlmodel: MlModel) -> None:
    """Move a flavor's model files up beside MLmodel, where the engines look (blocking). A flavor
    mlserve does not serve is left as it is: the load names it, once (not retried per poll)."""
    try:
        flavor, conf = mlmodel.flavor, mlmodel.flavor_conf()
    except ModelLoadError:
        return
    if flavor == "pytorch":  # data/model.pth (pickle or TorchScript) or data/model.pt2 (torch.export)
        data = folder / str(conf.get("model_data", "data"))
        for saved, served in (("model.pth", "model.pt"), ("model.pt2", "model.pt2")):
            if (data / saved).is_file():
                _move(data / saved, folder / served)
    elif flavor == "sentence_transformers":
        _move_children(folder / "model.sentence_transformer", folder)
    elif flavor == "transformers":
        _move_children(folder / str(conf.get("model_binary", "model")), folder)
        _move_children(folder / "components" / "tokenizer", folder)


def _move_children(source: Path, target: Path) -> None:
    if not source.is_dir():
        return
    for child in sorted(source.iterdir()):
        _move(child, target / child.name)


def _move(source: Path, target: Path) -> None:
    if target.exists():
        raise ModelLoadError(f"{source.name}: both the flavor's folder and the model's top folder have it")
    source.rename(target)
