"""gRPC messages <-> the protocol-neutral request and response (KServe v2 / Triton's ModelInfer).

Inputs come as typed contents (`fp32_contents`, ...) or, for every input at once, as
`raw_input_contents` in the binary tensor layout the HTTP extension uses; outputs always go back
as `raw_output_contents`, as Triton sends them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from google.protobuf import json_format

from mlserve.dataplane import DataPlane
from mlserve.errors import InvalidInput
from mlserve.monitor.metrics import Metrics
from mlserve.spec import DATATYPE_TO_NUMPY
from mlserve.spec.infer import InferRequest, InferResponse, class_counts_from
from mlserve.server.proto import grpc_service_pb2 as pb
from mlserve.config import LimitsConfig
from mlserve.server.tensors import decode_binary_tensor, encode_binary
from mlserve.server.statistics import model_stats
from mlserve.server.infer_rules import (
    check_content_type, check_request_id, check_shape_limits, schedule_policy, unhandled_parameters,
)

# Which typed-contents field carries each datatype (FP16 has none: it travels raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
OUTPUT_PARAMETERS = frozenset({"classification"})
"""Requested-output parameters the server honours; any other is refused by name."""


def parameter_value(param: pb.InferParameter) -> Any:
    """One InferParameter -> the Python value the HTTP JSON would have carried."""
    kind = param.WhichOneof("parameter_choice")
    if kind is None:
        raise InvalidInput("a parameter has no value")
    return getattr(param, kind)


def parameters_dict(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in params.items()}


def _shape(tensor: pb.ModelInferRequest.InferInputTensor) -> list[int]:
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {tensor.name!r}: shape must be non-negative integers, got {shape}")
    return shape


def _typed_tensor(tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int]) -> np.ndarray:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInput(f"input {tensor.name!r}: {tensor.datatype} data must come in raw_input_contents")
    contents = tensor.contents
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise InvalidInput(f"input {tensor.name!r}: {tensor.datatype} data belongs in {field}, not {others[0]}")
    values = getattr(contents, field)
    if len(values) != math.prod(shape):
        raise InvalidInput(
            f"input {tensor.name!r}: {len(values)} values do not fill shape {shape} ({math.prod(shape)} values)"
        )
    if tensor.datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = np.dtype(DATATYPE_TO_NUMPY[tensor.datatype])
    if dtype.kind in "iu" and len(values):
        wide = np.array(values, dtype=np.uint64 if dtype.kind == "u" else np.int64)
        limits = np.iinfo(dtype)
        if wide.min() < limits.min or wide.max() > limits.max:
            raise InvalidInput(f"input {tensor.name!r}: a value is out of range for {tensor.datatype}")
    return np.array(values, dtype=dtype).reshape(shape)


def _decode_inputs(message: pb.ModelInferRequest) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not message.inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs: "
            "either every input comes raw or none does"
        )
    arrays, datatypes = {}, {}
    for i, tensor in enumerate(message.inputs):
        if not tensor.name:
            raise InvalidInput("an input has no name")
        unknown = sorted(set(tensor.parameters) - {"content_type"})
        if unknown:
            raise InvalidInput(f"input {tensor.name!r}: parameter(s) {unknown} are not supported")
        if "content_type" in tensor.parameters:
            check_content_type(parameter_value(tensor.parameters["content_type"]), (tensor.datatype,),
                               f"input {tensor.name!r}")
        if tensor.datatype not in DATATYPE_TO_NUMPY:
            raise InvalidInput(
                f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}; one of {', '.join(DATATYPE_TO_NUMPY)}"
            )
        shape = _shape(tensor)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {tensor.name!r} has both contents and raw_input_contents")
            array = decode_binary_tensor(tensor.name, tensor.datatype, tuple(shape), memoryview(raw[i]))
        else:
            array = _typed_tensor(tensor, shape)
        if tensor.name in arrays:
            raise InvalidInput(f"input {tensor.name!r} appears twice")
        arrays[tensor.name], datatypes[tensor.name] = array, tensor.datatype
    return arrays, datatypes


def _requested_outputs(message: pb.ModelInferRequest) -> tuple[tuple[str, ...] | None, dict[str, int]]:
    if not message.outputs:
        return None, {}
    class_counts = {}
    for out in message.outputs:
        unknown = sorted(set(out.parameters) - OUTPUT_PARAMETERS)
        if unknown:
            raise InvalidInput(f"output {out.name!r}: parameter(s) {unknown} are not supported")
        k = class_counts_from(out.name, parameters_dict(out.parameters))
        if k is not None:
            class_counts[out.name] = k
    return tuple(out.name for out in message.outputs), class_counts


QUIET_TURNS = 5
"""SchedulePolicy.quiet_turns of a gRPC request. grpcio hands the loop one message per completion,
one read of a stream at a time, so the requests of a busy client come a turn or two apart, and a batch
that closed after one quiet turn ran with 1.2 rows (unary, c=64) or 2.5 (a stream with 64 outstanding).
With 5 turns: 8 and 7 rows, and 2.2x and 1.15x the requests per second (benchmarks.serving's seed
MLP, one core). A turn of an idle loop costs under 1 us, so a lone request barely waits."""


def decode_infer_request(
    message: pb.ModelInferRequest, headers: Mapping[str, str], limits: LimitsConfig, arrived: float,
    max_seconds: float | None = None,
) -> InferRequest:
    """The one place a gRPC ModelInferRequest becomes an InferRequest. `headers` is the call's
    metadata, for a sticky routing key taken from a header; `max_seconds` is the call's deadline."""
    for tensor in message.inputs:
        check_shape_limits(tensor.name, tuple(tensor.shape), limits)
    arrays, datatypes = _decode_inputs(message)
    outputs, class_counts = _requested_outputs(message)
    parameters = parameters_dict(message.parameters)
    check_content_type(parameters.get("content_type"), datatypes.values(), "the request")
    policy = schedule_policy(parameters, limits, arrived, max_seconds, QUIET_TURNS)
    return InferRequest(
        message.model_name, message.model_version or None, arrays, datatypes, check_request_id(message.id or None),
        outputs, unhandled_parameters(parameters), headers, policy, class_counts,
    )


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.req_id or ""
    )
    for name, array in response.outputs.items():
        datatype = response.datatypes[name]
        message.outputs.add(name=name, datatype=datatype, shape=array.shape)
        message.raw_output_contents.append(encode_binary(array, datatype))
    return message


def statistics_message(plane: DataPlane, metrics: Metrics | None, name: str,
                       version: str) -> pb.ModelStatisticsResponse:
    rows = model_stats(plane, metrics, name, version)
    return json_format.ParseDict({"model_stats": rows}, pb.ModelStatisticsResponse())
