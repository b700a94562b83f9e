"""Triton's load API with contents: `parameters.config` (a ModelConfig as JSON) becomes model.toml
keys held in memory for that load (as Triton does, the repository's model.toml is never
written), and `file:<version>/<path>` parameters become a new version's files.

Only what mlserve honours is taken; any other ModelConfig field is a 400 that names it, never
dropped. Keys of the repository's model.toml that the config does not mention stay as they are.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping

from google.protobuf import json_format

from mlserve.dataplane import ServedModel, Upload, check_file_path
from mlserve.dataplane.control import ModelControl
from mlserve.errors import InvalidInput, MlserveError
from mlserve.state import StateUnavailable
from mlserve.server.proto import model_config_pb2

_PLATFORMS = {"onnxruntime_onnx": "onnx", "onnxruntime": "onnx", "pytorch_libtorch": "torchscript",
              "pytorch": "torchscript", "tensorrt_plan": "tensorrt", "tensorrt": "tensorrt"}
_TOP_KEYS = {"name", "platform", "backend", "max_batch_size", "input", "output", "version_policy",
             "instance_group", "dynamic_batching", "parameters"}
_TENSOR_KEYS = {"name", "data_type", "dims", "label_filename"}
_BATCHING_KEYS = {"preferred_batch_size", "max_queue_delay_microseconds", "priority_levels",
                  "default_priority_level", "default_queue_policy"}
_QUEUE_KEYS = {"timeout_action", "default_timeout_microseconds", "allow_timeout_override", "max_queue_size"}
_INT_PARAMETERS = ("intra_op_threads", "cache_size", "priority_aging_us")
_STR_PARAMETERS = ("backend", "device")
# Keys a config replaces as a whole when it names them (model.toml key <- ModelConfig field).
_REPLACED = {"max_batch_size": "max_batch_size", "input": "inputs", "output": "outputs",
             "version_policy": "version_policy", "instance_group": "instances"}


def _only(what: str, raw: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise InvalidInput(f"config {what}: {', '.join(extra)} not supported by mlserve")


def _tensors(raw: list, max_batch_size: int, what: str) -> list[dict[str, Any]]:
    specs = []
    for tensor in raw:
        _only(what, tensor, _TENSOR_KEYS)
        datatype = tensor.get("data_type", "TYPE_FP32").removeprefix("TYPE_")
        dims = [int(d) for d in tensor.get("dims", [])]
        shape = [-1, *dims] if max_batch_size > 0 else dims
        specs.append({"name": tensor["name"], "datatype": "BYTES" if datatype == "STRING" else datatype,
                      "shape": shape})
    return specs


def _version_policy(raw: Mapping[str, Any]) -> dict[str, Any]:
    if "all" in raw:
        return {"all": True}
    if "specific" in raw:
        return {"specific": [int(v) for v in raw["specific"].get("versions", [])]}
    return {"latest": int(raw.get("latest", {}).get("num_versions", 1))}


def _instances(raw: list, out: dict[str, Any]) -> None:
    if len(raw) != 1:
        raise InvalidInput("config instance_group: mlserve takes exactly one group")
    group = raw[0]
    _only("instance_group", group, {"name", "count", "kind", "gpus"})
    out["instances"] = int(group.get("count", 1))
    kind = group.get("kind", "KIND_CPU")
    if kind not in ("KIND_CPU", "KIND_GPU"):
        raise InvalidInput(f"config instance_group: kind {kind} not supported by mlserve")
    gpus = group.get("gpus", [])
    out["device"] = "cpu" if kind == "KIND_CPU" else f"cuda:{gpus[0]}" if gpus else "cuda"


def _batching(raw: Mapping[str, Any], out: dict[str, Any]) -> None:
    _only("dynamic_batching", raw, _BATCHING_KEYS)
    if "preferred_batch_size" in raw:
        out["preferred_batch_sizes"] = [int(s) for s in raw["preferred_batch_size"]]
    if "max_queue_delay_microseconds" in raw:
        out["max_queue_delay_us"] = int(raw["max_queue_delay_microseconds"])
    if int(raw.get("priority_levels", 0)) > 0:
        out["priority_levels"] = int(raw["priority_levels"])
        if int(raw.get("default_priority_level", 0)) > 0:
            out["default_priority_level"] = int(raw["default_priority_level"])
    policy = raw.get("default_queue_policy", {})
    _only("default_queue_policy", policy, _QUEUE_KEYS)
    if policy.get("timeout_action", "REJECT") != "REJECT" or policy.get("allow_timeout_override", True) is False:
        raise InvalidInput("config default_queue_policy: mlserve always rejects on timeout and lets requests "
                           "shorten it (timeout_action REJECT, allow_timeout_override true)")
    if int(policy.get("max_queue_size", 0)) > 0:
        out["max_queue_size"] = int(policy["max_queue_size"])
    if "default_timeout_microseconds" in policy:
        out["timeout_us"] = int(policy["default_timeout_microseconds"])


def _parameters(raw: Mapping[str, Any], out: dict[str, Any]) -> None:
    _only("parameters", raw, set(_INT_PARAMETERS) | set(_STR_PARAMETERS))
    for key, value in raw.items():
        text = value.get("string_value", "") if isinstance(value, dict) else ""
        if key in _STR_PARAMETERS:
            if text:
                out[key] = text
        elif not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise InvalidInput(f"config parameters: {key} must be a whole number, got {text!r}")
        else:
            out[key] = int(text)


def _parse(model: str, text: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
        json_format.ParseDict(raw, model_config_pb2.ModelConfig())
    except (ValueError, json_format.ParseError) as exc:
        raise InvalidInput(f"config is not a Triton ModelConfig in JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidInput("config must be a JSON object")
    _only("", raw, _TOP_KEYS)
    if raw.get("name", model) != model:
        raise InvalidInput(f"config names model {raw['name']!r}, not {model!r}")
    return raw


def toml_from_config(model: str, text: str, current: Mapping[str, Any]) -> dict[str, Any]:
    """The model.toml table a config asks for: the current one with the config's keys applied."""
    raw = _parse(model, text)
    out = {k: v for k, v in current.items() if not any(f in raw and k == t for f, t in _REPLACED.items())}
    for key in ("platform", "backend"):
        if key in raw:
            if raw[key] not in _PLATFORMS:
                raise InvalidInput(f"config {key} {raw[key]!r} not supported; one of {', '.join(_PLATFORMS)}")
            out["backend"] = _PLATFORMS[raw[key]]
    if "max_batch_size" in raw:
        out["max_batch_size"] = int(raw["max_batch_size"])
    max_batch_size = int(out.get("max_batch_size", 64))
    for field, key in (("input", "inputs"), ("output", "outputs")):
        if field in raw:
            out[key] = _tensors(raw[field], max_batch_size, field)
    if "version_policy" in raw:
        out["version_policy"] = _version_policy(raw["version_policy"])
    if "instance_group" in raw:
        _instances(raw["instance_group"], out)
    _batching(raw.get("dynamic_batching", {}), out)
    _parameters(raw.get("parameters", {}), out)
    return out


async def load_model(control: ModelControl, name: str, parameters: Mapping[str, Any], is_base64: bool,
                     who: str) -> ServedModel:
    """Triton's load over HTTP and gRPC alike: with parameters it uploads (files written, the config
    held for this load), without it loads the repository's folder. Every error the load raises says
    "failed to load 'name'", the words Triton's clients and examples look for."""
    build = (lambda toml: upload_from_parameters(name, parameters, toml, is_base64)) if parameters else None
    try:
        return await control.load(name, who, build)
    except StateUnavailable:
        raise  # the shared state's refusal, not the load's
    except MlserveError as exc:
        if "failed to load" not in str(exc):
            exc.args = (f"failed to load {name!r}, {exc}",)
        raise


def check_unload_parameters(parameters: Mapping[str, Any]) -> None:
    """Triton's unload takes `unload_dependents`; mlserve has no ensembles, so no model has
    dependents and the flag changes nothing either way. Any other parameter is refused."""
    unknown = sorted(k for k in parameters if k != "unload_dependents")
    if unknown:
        raise InvalidInput(f"unload: parameter(s) {unknown} are not supported (unload_dependents is)")
    if not isinstance(parameters.get("unload_dependents", False), bool):
        raise InvalidInput("unload: parameter 'unload_dependents' must be true or false")


def upload_from_parameters(model: str, parameters: Mapping[str, Any], current_toml: Mapping[str, Any],
                           is_base64: bool) -> Upload:
    """Load parameters -> what to upload: files by version (base64 text over HTTP, bytes over gRPC),
    and the config's model.toml table (for this load only)."""
    unknown = sorted(k for k in parameters if k != "config" and not k.startswith("file:"))
    if unknown:
        raise InvalidInput(f"load: parameter(s) {unknown} are not supported (config and file:<version>/<name> are)")
    files: dict[int, dict[str, bytes]] = {}
    for key, value in parameters.items():
        if key.startswith("file:"):
            version, rel = check_file_path(key.removeprefix("file:"))
            files.setdefault(version, {})[rel] = _contents(key, value, is_base64)
    for version, named in files.items():
        _check_no_collision(version, named)
    config = parameters.get("config")
    if config is not None and not isinstance(config, str):
        raise InvalidInput("load: parameter 'config' must be a JSON string")
    toml = toml_from_config(model, config, current_toml) if config else None
    return Upload(model, files, toml)


def _check_no_collision(version: int, named: Mapping[str, bytes]) -> None:
    """A path that is a file and also the folder of another ("a" and "a/b") cannot both be written."""
    folders = {"/".join(rel.split("/")[:i]) for rel in named for i in range(1, rel.count("/") + 1)}
    both = sorted(folders & set(named))
    if both:
        raise InvalidInput(f"load: file:{version}/{both[0]} is named both as a file and as a folder")


def _contents(key: str, value: Any, is_base64: bool) -> bytes:
    if not is_base64:
        if not isinstance(value, bytes):
            raise InvalidInput(f"load: {key} must carry bytes")
        return value
    if not isinstance(value, str):
        raise InvalidInput(f"load: {key} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"load: {key} is not valid base64") from None
