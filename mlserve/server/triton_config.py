"""A served version's settings in Triton's ModelConfig schema (model_config.proto), for
`/v2/models/{m}/config` and the gRPC ModelConfig call. Settings Triton has no field for go in
`parameters` as strings, as Triton's own backends do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import json_format

from mlserve.dataplane import ServedModel, ServedVersion, labels_path
from mlserve.spec import BatchingSpec, ModelConfig, TensorSpec, VersionPolicy
from mlserve.server.proto import model_config_pb2

# Triton's DataType names: BYTES is TYPE_STRING, the rest keep the v2 name.
TRITON_DATATYPE = {"BYTES": "TYPE_STRING"}

# The protocol extensions server metadata names over HTTP and gRPC, as Triton names them;
# `model_repository(unload_dependents)` says unload takes that parameter.
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository",
              "model_repository(unload_dependents)", "schedule_policy", "statistics"]


def triton_datatype(datatype: str) -> str:
    return TRITON_DATATYPE.get(datatype, f"TYPE_{datatype}")


def _tensors(specs: tuple[TensorSpec, ...], max_batch_size: int) -> list[dict[str, Any]]:
    """`dims` leave out the batch dimension when the model batches, as Triton's do."""
    return [
        {"name": s.name, "data_type": triton_datatype(s.datatype),
         "dims": list(s.shape[1:] if max_batch_size > 0 and s.shape else s.shape)}
        for s in specs
    ]


def _outputs(specs: tuple[TensorSpec, ...], max_batch_size: int, labels: Path | None) -> list[dict[str, Any]]:
    """With a labels file, every output that can be classified names it (`class_count` uses it)."""
    outputs = _tensors(specs, max_batch_size)
    if labels is not None:
        for spec, out in zip(specs, outputs):
            if spec.datatype != "BYTES":
                out["label_filename"] = labels.name
    return outputs


def _version_policy(policy: VersionPolicy) -> dict[str, Any]:
    if policy.all:
        return {"all": {}}
    if policy.specific:
        return {"specific": {"versions": list(policy.specific)}}
    return {"latest": {"num_versions": policy.latest or 1}}


def _instance_group(config: ModelConfig, device: str) -> list[dict[str, Any]]:
    group: dict[str, Any] = {"name": "mlserve", "count": config.instances, "kind": "KIND_CPU"}
    if device.startswith("cuda"):
        group["kind"] = "KIND_GPU"
        group["gpus"] = [int(device.partition(":")[2] or 0)]
    return [group]


def _dynamic_batching(batching: BatchingSpec) -> dict[str, Any]:
    levels = batching.priority_levels
    return {
        "preferred_batch_size": list(batching.preferred_batch_sizes),
        "max_queue_delay_microseconds": batching.max_queue_delay_us,
        "priority_levels": levels if levels > 1 else 0,
        "default_priority_level": (batching.default_priority_level or levels) if levels > 1 else 0,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": batching.timeout_us,
            "allow_timeout_override": True,
            "max_queue_size": batching.max_queue_size,
        },
    }


def _parameters(config: ModelConfig, device: str) -> dict[str, dict[str, str]]:
    batching = config.batching
    values = {
        "backend": config.backend or "", "device": device, "intra_op_threads": config.intra_op_threads,
        "cache_size": batching.cache_size, "priority_aging_us": batching.priority_aging_us,
    }
    return {key: {"string_value": str(value)} for key, value in values.items()}


def model_config_dict(name: str, model: ServedModel, version: ServedVersion) -> dict[str, Any]:
    """The version's config as Triton's JSON (it parses with json_format.ParseDict into ModelConfig)."""
    info = version.info
    assert info is not None, "only a loaded version has a config to show"
    config = model.entry.config
    device = version.device or config.device or "cpu"  # where placement put it (auto resolves at load)
    body: dict[str, Any] = {
        "name": name,
        "platform": info.platform,
        "max_batch_size": info.max_batch_size,
        "version_policy": _version_policy(config.version_policy),
        "input": _tensors(info.inputs, info.max_batch_size),
        "output": _outputs(info.outputs, info.max_batch_size, labels_path(version.path)),
        "instance_group": _instance_group(config, device),
        "parameters": _parameters(config, device),
    }
    if info.max_batch_size > 0:
        body["dynamic_batching"] = _dynamic_batching(config.batching)
    return body


def model_config_message(name: str, model: ServedModel, version: ServedVersion) -> model_config_pb2.ModelConfig:
    return json_format.ParseDict(model_config_dict(name, model, version), model_config_pb2.ModelConfig())
