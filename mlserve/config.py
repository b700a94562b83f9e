"""Typed settings, filled in order: defaults, mlserve.toml, MLSERVE_* environment, command-line flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from urllib.parse import urlsplit
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from mlserve.process import ProcessSettings

LOG_LEVELS = ("debug", "info", "warning", "error")
DEVICE_PATTERN = r"cpu|auto|cuda(:\d+)?"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where and how the HTTP server listens."""

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = 8000
    """TCP port to bind; 0 picks a free one."""
    log_level: str = "info"
    """debug | info | warning | error."""
    max_body_bytes: int = 64 * 1024 * 1024
    """Largest request body accepted; larger ones get 413."""
    shutdown_grace_s: float = 30.0
    """How long SIGTERM waits for in-flight requests before exiting."""
    gc_freeze: bool = True
    """Freeze the heap after models load and after each reload, so the cyclic collector stops walking
    it (the p99 tail); false leaves Python's collector as it is."""
    gc_threshold: int = 10_000
    """Allocations between young-generation collections (Python's default is 700); 0 keeps the default."""
    torch_threads: int = 1
    """torch's intra-op threads, for every torch model in the process (0 = one per core); torch keeps
    one pool per process, so a model cannot set its own."""
    switch_interval_us: int = 500
    """Python's thread switch interval in microseconds (its default is 5,000): how long a batch
    worker with a finished batch can wait for the event loop to hand over."""
    grpc_port: int = 8001
    """TCP port of the gRPC server (KServe v2 / Triton GRPCInferenceService) on the same host; 0 = off."""
    fast_lane: bool = True
    """Serve v2 infer on the fast lane (httptools) in front of aiohttp, on the same port; false = aiohttp
    serves everything. Off with TLS (aiohttp serves HTTPS)."""
    max_connections: int = 10_000
    """Open HTTP connections at once (fast lane on); more are answered 503 and closed."""
    header_timeout_s: float = 10.0
    """Time a request head may take to arrive once begun (fast lane on); then 408 and close."""
    body_timeout_s: float = 30.0
    """Longest gap between reads of a request body the fast lane serves; then 408 and close."""
    keepalive_timeout_s: float = 75.0
    """An idle keep-alive connection closes after this long (aiohttp's own default)."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names the server answers to besides loopback names and the bound address (and any IP
    address when bound to all): exact names, ".example.com" for a domain and its subdomains, or "*"
    for any (turns the DNS-rebinding check off). Another Host header gets 403."""
    cors_origins: tuple[str, ...] = ()
    """Origins (scheme://host[:port]) whose pages may call the server from a browser, with CORS;
    "*" = any. A request from another origin gets 403."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or CIDRs of reverse proxies whose X-Forwarded-For names the client (the failed-key
    throttle's address); X-Forwarded-For from anyone else is ignored."""

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        for name in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for entry in self.allowed_hosts:
            _check_host_entry(entry)
        for entry in self.cors_origins:
            _check_origin_entry(entry)
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or CIDR") from None
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not 0 <= self.grpc_port <= 65535:
            raise ValueError(f"grpc_port must be in 0..65535 (0 = off), got {self.grpc_port}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        if self.shutdown_grace_s < 0:
            raise ValueError("shutdown_grace_s must be >= 0")
        if self.gc_threshold < 0:
            raise ValueError("gc_threshold must be >= 0")
        if not 0 <= self.torch_threads <= 1024:
            raise ValueError(f"torch_threads must be in 0..1024 (0 = one per core), got {self.torch_threads}")
        if not 50 <= self.switch_interval_us <= 100_000:
            raise ValueError(f"switch_interval_us must be in 50..100000, got {self.switch_interval_us}")

    @property
    def process(self) -> ProcessSettings:
        return ProcessSettings(self.torch_threads, self.switch_interval_us)


_HOST_ENTRY = re.compile(r"\*|\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?|\[?[0-9a-f:.]+\]?")
_ORIGIN_ENTRY = re.compile(r"\*|null|https?://[a-z0-9_.-]+(:\d{1,5})?|https?://\[[0-9a-f:.]+\](:\d{1,5})?")


def _check_host_entry(entry: str) -> None:
    if not isinstance(entry, str) or not _HOST_ENTRY.fullmatch(entry.lower()):
        raise ValueError(f"allowed_hosts: {entry!r} is not a host name, .domain, IP address or \"*\" (no scheme or port)")


def _check_origin_entry(entry: str) -> None:
    if not isinstance(entry, str) or not _ORIGIN_ENTRY.fullmatch(entry.lower().rstrip("/")):
        raise ValueError(f"cors_origins: {entry!r} is not an origin like https://app.example:8443 (or \"*\")")


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Where models come from and how they are loaded."""

    models: str = "./models"
    """Model repository: a local folder, s3://bucket/prefix, or an MLflow model registry
    (mlflow://host:port, mlflows:// for HTTPS; ?models=a,b or ?tag=key[=value] to choose models)."""
    default_device: str = "cpu"
    """Device for models whose model.toml names none: cpu, cuda, cuda:N or auto (the GPU with the
    most room, else the CPU)."""
    gpu_memory_fraction: float = 0.9
    """Share of each GPU's memory mlserve's models may hold together; a version that does not fit
    evicts idle ones (least recently used) when a request waits for it, else is UNAVAILABLE."""
    trust_repository: bool = False
    """Load TorchScript and torch.export artifacts (they can run code when read) for every model."""
    trust_uploads: bool = False
    """Load code-bearing artifacts (TorchScript, torch.export, AOTInductor) in versions that arrived
    by upload (Triton's load API with file: contents). Neither trust_repository nor a model's
    `trusted = true` covers them: with this on, an admin key can run code in the server."""
    s3_endpoint: str = ""
    """S3 endpoint URL for s3:// repositories (empty = AWS); region and credentials come from the
    standard AWS settings (AWS_REGION, AWS_ACCESS_KEY_ID, ~/.aws)."""
    s3_region: str = ""
    """S3 region (empty = the standard AWS settings decide)."""
    cache_dir: str = ""
    """Where s3:// versions are downloaded to (empty = ~/.cache/mlserve)."""
    cache_versions: int = 4
    """Downloaded version folders kept per model in cache_dir; the least recently fetched go first."""
    poll_interval_s: float = 0.0
    """Reconcile with the repository every this many seconds (0 = only on SIGHUP or the API)."""
    lazy: bool = False
    """List models at start but load each on its first request."""
    max_loaded_models: int = 0
    """Most models in memory at once; the least recently used idle one is evicted (0 = no cap)."""
    max_loaded_mb: float = 0.0
    """Most artifact megabytes (MiB) in memory at once, evicting as above (0 = no cap)."""
    max_artifact_bytes: int = 32 * 1024**3
    """A version folder larger than this is not loaded (UNAVAILABLE with the reason)."""
    mlflow_token: str = ""
    """Bearer token for an mlflow:// repository (MLFLOW_TRACKING_TOKEN sets it too; empty = none)."""
    mlflow_alias: str = "champion"
    """The MLflow model alias whose version is served (moving it swaps versions at the next poll)."""
    mlflow_challenger_alias: str = "challenger"
    """The MLflow alias of a version rolled out against the served one: a canary rollout, or a split
    with an experiment, as the champion's `[challenger]` table says (docs/models.md, MLflow)."""

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must name a repository")
        if self.poll_interval_s < 0:
            raise ValueError("poll_interval_s must be >= 0")
        if self.cache_versions < 1:
            raise ValueError("cache_versions must be >= 1")
        if self.max_loaded_models < 0 or self.max_loaded_mb < 0:
            raise ValueError("max_loaded_models and max_loaded_mb must be >= 0")
        if not re.fullmatch(DEVICE_PATTERN, self.default_device):
            raise ValueError(f"default_device must be cpu, cuda, cuda:N or auto, got {self.default_device!r}")
        if not 0 < self.gpu_memory_fraction <= 1:
            raise ValueError(f"gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", self.mlflow_alias):
            raise ValueError(f"mlflow_alias must be letters, digits, '_' or '-', got {self.mlflow_alias!r}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", self.mlflow_challenger_alias):
            raise ValueError("mlflow_challenger_alias must be letters, digits, '_' or '-', "
                             f"got {self.mlflow_challenger_alias!r}")
        if self.mlflow_challenger_alias == self.mlflow_alias:
            raise ValueError(f"mlflow_challenger_alias and mlflow_alias are both {self.mlflow_alias!r}")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Who may call which endpoint: API keys, open paths, and where admin routes are served."""

    keys_file: str = ""
    """JSON file of API keys (`mlserve keys create`); empty = no authentication."""
    metrics_open: bool = True
    """Serve /metrics without a key even when keys are configured."""
    admin_enabled: bool = False
    """Serve /admin/ and /v2/repository/ on a non-loopback address (loopback always serves them)."""
    tls_cert: str = ""
    """PEM certificate chain; with tls_key, the server speaks HTTPS only."""
    tls_key: str = ""
    """PEM private key for tls_cert."""
    failed_auth_burst: int = 20
    """Failed API key checks one client address may make in a burst before it gets 429."""
    failed_auth_per_s: float = 1.0
    """Rate at which an address earns failed checks back (a key that checks out costs nothing)."""

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.failed_auth_burst < 1 or self.failed_auth_per_s <= 0:
            raise ValueError("failed_auth_burst must be >= 1 and failed_auth_per_s > 0")


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Request limits, deadlines, overload behaviour and shutdown pacing."""

    max_tensor_elements: int = 16 * 1024 * 1024
    """Largest element count of one input tensor; more gets 413."""
    max_batch_rows: int = 4096
    """Most leading rows one request may carry; more gets 413."""
    max_prompt_tokens: int = 8192
    """Longest prompt a generation request may send."""
    max_generation_tokens: int = 4096
    """Most tokens a generation request may ask for."""
    generation_budget_tokens: int = 16384
    """Most tokens one generation request may generate in all: prompts x sequences per prompt (n or
    best_of) x max_tokens; more gets 400 naming the product."""
    max_header_bytes: int = 8190
    """Longest request line or header field; longer gets 400 before any handler runs."""
    default_timeout_s: float = 60.0
    """Deadline of an inference request that names none (`timeout` parameter, microseconds); 0 = none."""
    max_in_flight: int = 1024
    """Inference requests the whole server holds at once; more get 503 at once."""
    grpc_stream_window: int = 64
    """Requests one gRPC stream holds at once, from read until its answer is written to the client;
    while it is full the server reads no more of that stream (a client that never reads holds this many)."""
    not_ready_when_saturated: bool = False
    """Report /v2/health/ready 503 while max_in_flight is reached, so a load balancer steers away."""
    shutdown_delay_s: float = 0.0
    """On SIGTERM, report not ready this long before closing the listener (load balancer catch-up)."""

    def __post_init__(self) -> None:
        for name in ("max_tensor_elements", "max_batch_rows", "max_prompt_tokens", "max_generation_tokens",
                     "generation_budget_tokens", "max_header_bytes", "max_in_flight", "grpc_stream_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.default_timeout_s < 0 or self.shutdown_delay_s < 0:
            raise ValueError("default_timeout_s and shutdown_delay_s must be >= 0")


LOG_FORMATS = ("plain", "json")
LOG_INPUTS = ("hash", "full")


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Logs, the sampled prediction log and drift statistics."""

    log_format: str = "plain"
    """plain | json: one line per event either way."""
    prediction_log: str = ""
    """Folder for the sampled prediction log (JSON lines); empty = no prediction log."""
    log_sample_rate: float = 0.01
    """Share of answered requests written to the prediction log (0..1)."""
    log_inputs: str = "hash"
    """hash: a SHA-256 per input tensor; full: the input values."""
    prediction_log_max_bytes: int = 64 * 1024 * 1024
    """Rotate the prediction log past this size."""
    prediction_log_max_files: int = 10
    """Files kept, the current one included."""
    prediction_log_queue: int = 10000
    """Sampled records waiting for the writer before new ones are dropped (and counted)."""
    drift: bool = True
    """Measure drift for every model (a model's [drift] enabled = false turns it off for that one)."""
    drift_queue: int = 1024
    drift_sample_per_s: int = 2000
    """At most this many answered requests a second feed drift statistics (bursts of up to one
    second's worth pass whole); 0 = every request."""
    """Answered requests waiting for the drift worker before new ones are dropped (and counted)."""
    status_interval_s: float = 5.0
    """How often the status page's history (requests/s, latency, ...) takes a point per version."""
    status_points: int = 60
    """Points kept per version for the status page's sparklines (60 x 5 s = the last 5 minutes)."""

    def __post_init__(self) -> None:
        if self.status_interval_s <= 0 or self.status_points < 2:
            raise ValueError("status_interval_s must be > 0 and status_points >= 2")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.log_inputs not in LOG_INPUTS:
            raise ValueError(f"log_inputs must be one of {', '.join(LOG_INPUTS)}, got {self.log_inputs!r}")
        if not 0.0 <= self.log_sample_rate <= 1.0:
            raise ValueError(f"log_sample_rate must be in 0..1, got {self.log_sample_rate}")
        if self.prediction_log_max_bytes < 1024 or self.prediction_log_max_files < 1:
            raise ValueError("prediction_log_max_bytes must be >= 1024 and prediction_log_max_files >= 1")
        if self.drift_sample_per_s < 0:
            raise ValueError("drift_sample_per_s must be >= 0")
        if self.prediction_log_queue < 1 or self.drift_queue < 1:
            raise ValueError("prediction_log_queue and drift_queue must be >= 1")


@dataclass(frozen=True, slots=True)
class JobsConfig:
    """In-server jobs: batch jobs (`/v2/batch/jobs`: which files they may touch, where they are
    recorded, how many are kept) and optimize runs (`/admin/models/{m}/optimize`: how many at once,
    for how long)."""

    allowed_dir: str = ""
    """Folder every job's input, output and errors file must lie under; empty = in-server jobs are off."""
    state_dir: str = ""
    """Where job records are kept so unfinished jobs resume after a restart (empty = <allowed_dir>/.mlserve-jobs)."""
    max_running: int = 1
    """Jobs running at once; later ones wait their turn."""
    chunk_rows: int = 0
    """Rows read and checkpointed at a time (0 = about 4096, a multiple of the model's batch size)."""
    max_jobs: int = 1000
    """Batch job records kept (queued, running and finished); at the cap the oldest finished go,
    and a job beyond that many unfinished ones is a 429."""
    retention_s: float = 7 * 24 * 3600.0
    """How long a finished batch job's record is kept (its output files stay)."""
    optimize_max_running: int = 2
    """Optimize runs (child processes) at once across the server; one more is a 429."""
    optimize_timeout_s: float = 3600.0
    """Wall-clock limit of one optimize run; past it the child is stopped and the job fails."""
    lease_s: float = 10.0
    """With a shared state store: how long a replica's hold on a batch job lasts unless renewed (it
    renews every third of it); a job whose replica died is taken over this long after its last renewal.
    An optimize job (not taken over: its process dies with its replica) then reads as failed."""
    scan_s: float = 2.0
    """With a shared state store: how often a replica looks for batch jobs whose lease ran out."""

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise ValueError("max_running must be >= 1")
        if self.chunk_rows < 0:
            raise ValueError("chunk_rows must be >= 0")
        if self.max_jobs < 1:
            raise ValueError("max_jobs must be >= 1")
        if not 0 <= self.retention_s < float("inf"):
            raise ValueError("retention_s must be a number of seconds >= 0")
        if self.optimize_max_running < 1:
            raise ValueError("optimize_max_running must be >= 1")
        if not 0 < self.optimize_timeout_s < float("inf"):
            raise ValueError("optimize_timeout_s must be a positive number of seconds")
        if not 0.1 <= self.lease_s <= 3600:
            raise ValueError("lease_s must be a number of seconds in 0.1..3600")
        if not 0.05 <= self.scan_s <= 3600:
            raise ValueError("scan_s must be a number of seconds in 0.05..3600")


STATE_SCHEMES = ("redis", "rediss")
STATE_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")


def check_state_url(url: str) -> str:
    """The URL as given when it is "memory" or a well-formed Redis URL; ValueError naming what is wrong.
    The message never repeats a password."""
    if url == "memory":
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"[state] url is not a valid URL ({exc})") from None
    if parts.scheme not in STATE_SCHEMES:
        raise ValueError(f"[state] url must be 'memory' or redis://host:port/db (rediss:// for TLS), "
                         f"got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("[state] url names no host (redis://host:6379/0)")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"[state] url port must be in 1..65535, got {port}")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"[state] url database must be a number (redis://host:6379/0), got {db!r}")
    if parts.query or parts.fragment:
        raise ValueError("[state] url takes no query or fragment: give the password as redis://:PASSWORD@host")
    return url


def check_state_prefix(prefix: str) -> str:
    if not prefix or len(prefix) > 64 or set(prefix) - STATE_PREFIX_CHARS:
        raise ValueError(f"[state] prefix must be 1..64 characters of letters, digits and _-.:, got {prefix!r}")
    return prefix



@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where the control state that replicas share lives (mlserve/state/)."""

    url: str = "memory"
    """memory (one process) or redis://[:password@]host:6379/0 (rediss:// for TLS): replicas that share it act as one server."""
    prefix: str = "mlserve"
    """Prefix of every key, so several deployments can share one Redis."""

    def __post_init__(self) -> None:
        check_state_url(self.url)
        check_state_prefix(self.prefix)


@dataclass(frozen=True, slots=True)
class Config:
    """All of mlserve's settings; each component takes only its own section."""

    server: ServerConfig = field(default_factory=ServerConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    state: StateConfig = field(default_factory=StateConfig)


_SECTIONS = {
    "server": ServerConfig, "registry": RegistryConfig, "auth": AuthConfig, "limits": LimitsConfig,
    "monitor": MonitorConfig, "jobs": JobsConfig, "state": StateConfig,
}


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_STRINGS = "tuple[str, ...]"
"""A list setting: an array of strings in mlserve.toml, comma-separated in the environment and flags."""


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{key} must be a list of strings (comma-separated in the environment), got {value!r}")


def _coerce(value: str, kind: str, key: str) -> Any:
    """An environment string as the field's type; ValueError naming `key` when it is not one."""
    if kind == _STRINGS:
        return _strings(value, key)
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise ValueError(f"{key} must be {_type_word(kind)}, got {value!r}") from None
    if kind == "bool":
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} must be a boolean (true/false, 1/0, yes/no, on/off), got {value!r}")
    return value


def _type_word(kind: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "a boolean", "str": "a string"}[kind]


def _check_type(key: str, value: Any, kind: str) -> Any:
    """A value from mlserve.toml or a flag, held to the field's type: no string where a boolean
    belongs (`"false"` is truthy), no boolean where a number belongs. An int is a valid float."""
    if kind == _STRINGS:
        return _strings(value, key)
    expected = _TYPES.get(kind)
    if expected is None:
        return value  # a field type with its own check in __post_init__
    is_ok = isinstance(value, expected) and (kind == "bool" or not isinstance(value, bool))
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not is_ok:
        raise ValueError(f"{key} must be {_type_word(kind)}, got {value!r}")
    return value


def _typed(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Each known key's value checked against its field's type (unknown keys are reported later)."""
    kinds = _field_types(_SECTIONS[section])
    return {
        name: _check_type(f"[{section}] {name}", value, kinds[name]) if name in kinds else value
        for name, value in values.items()
    }


def _field_types(section: type) -> dict[str, str]:
    """Field name -> type name; the dataclasses' annotations are strings (postponed evaluation)."""
    return {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in fields(section)}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """MLSERVE_<SECTION>_<FIELD>, e.g. MLSERVE_SERVER_PORT=9000; MLSERVE_MODELS is a shortcut."""
    out: dict[str, dict[str, Any]] = {}
    for section, cls in _SECTIONS.items():
        for name, kind in _field_types(cls).items():
            key = f"MLSERVE_{section.upper()}_{name.upper()}"
            if key in environ:
                out.setdefault(section, {})[name] = _coerce(environ[key], kind, key)
    if "MLSERVE_MODELS" in environ:
        out.setdefault("registry", {})["models"] = environ["MLSERVE_MODELS"]
    if environ.get("MLFLOW_TRACKING_TOKEN") and "mlflow_token" not in out.get("registry", {}):
        out.setdefault("registry", {})["mlflow_token"] = environ["MLFLOW_TRACKING_TOKEN"]  # MLflow's own name
    return out


def load_config(
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the one Config: defaults < mlserve.toml < environment < flags (overrides)."""
    merged: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    if file is None and Path("mlserve.toml").is_file():
        file = Path("mlserve.toml")
    if file is not None:
        with open(file, "rb") as fh:
            data = tomllib.load(fh)
        for section, values in data.items():
            if section not in _SECTIONS:
                raise ValueError(f"{file}: unknown section [{section}]")
            if not isinstance(values, dict):
                raise ValueError(f"{file}: {section} must be a table ([{section}]), got {values!r}")
            merged[section].update(_typed(section, values))
    for section, values in _env_overrides(os.environ if environ is None else environ).items():
        merged[section].update(values)
    for section, values in (overrides or {}).items():
        merged[section].update({k: v for k, v in values.items() if v is not None})
    built = {}
    for section, cls in _SECTIONS.items():
        known = set(_field_types(cls))
        unknown = set(merged[section]) - known
        if unknown:
            raise ValueError(f"unknown setting(s) in [{section}]: {', '.join(sorted(unknown))}")
        built[section] = cls(**_typed(section, merged[section]))
    return Config(**built)


def replace(config: Config, **sections: Any) -> Config:
    return dataclasses.replace(config, **sections)
