"""The Open Inference Protocol's request rules, applied the same way by the HTTP and gRPC codecs:
the parameters mlserve honours, the schedule policy, content types, request ids and the shape limits
checked before any tensor data is read."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from mlserve.config import LimitsConfig
from mlserve.errors import InvalidInput, PayloadTooLarge
from mlserve.spec import SchedulePolicy
from mlserve.spec.infer import InferRequest
from mlserve.spec.request_id import check_request_id as check_id

# Parameters mlserve honours, by where they stand in the request. Others are refused by name; a
# request's other parameters go on to the service, which allows only the routed model's sticky key.
REQUEST_PARAMETERS = frozenset({"priority", "timeout", "binary_data_output", "content_type"})
INPUT_PARAMETERS = frozenset({"binary_data_size", "content_type"})
OUTPUT_PARAMETERS = frozenset({"binary_data", "classification"})


def check_request_id(value: Any) -> str | None:
    """A client's request id (None when it sent none): see `mlserve.spec.request_id`."""
    return None if value is None else check_id(value)


def check_content_type(value: Any, datatypes: Iterable[str], where: str) -> None:
    """`content_type`, which MLServer's and KServe's codecs send, is taken where it names what
    mlserve does anyway: "np" (the tensor as it is) and "str" on BYTES (UTF-8 text). Any other value
    asks for a decoding mlserve does not do (it decodes by datatype) and is refused by name."""
    if value is None or value == "np" or (value == "str" and all(d == "BYTES" for d in datatypes)):
        return
    raise InvalidInput(f"{where}: content_type {value!r} is not supported (\"np\", or \"str\" on BYTES tensors)")


def _non_negative_int(parameters: dict[str, Any], name: str) -> int | None:
    value = parameters.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"parameter {name!r} must be a non-negative integer, got {value!r}")
    return value


def schedule_policy(
    parameters: dict[str, Any], limits: LimitsConfig, arrived: float, max_seconds: float | None = None,
    quiet_turns: int = 1,
) -> SchedulePolicy:
    """Triton's schedule policy, decoded once: `priority` (1 = highest) and `timeout` (microseconds,
    from arrival to answer); without a timeout the server's default deadline applies. `max_seconds`
    caps it further (a gRPC call's own deadline); `quiet_turns` is the front's (SchedulePolicy)."""
    priority = _non_negative_int(parameters, "priority")
    timeout = parameters.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0):
        raise InvalidInput(f"parameter 'timeout' must be a positive integer of microseconds, got {timeout!r}")
    seconds = timeout / 1e6 if timeout is not None else (limits.default_timeout_s or None)
    if max_seconds is not None:
        seconds = max_seconds if seconds is None else min(seconds, max_seconds)
    return SchedulePolicy(priority, None, arrived + seconds if seconds is not None else None, quiet_turns)


def unhandled_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The request parameters left for the service once the schedule policy took its own."""
    if not parameters:
        return parameters
    return {k: v for k, v in parameters.items() if k not in REQUEST_PARAMETERS}


MAX_DIMS = 32
"""Most dimensions a tensor may have (numpy's own limit is 64; no served model takes more than a few)."""


def check_shape_limits(name: str, shape: tuple[int, ...], limits: LimitsConfig) -> None:
    """From the declared shape alone, before any data is decoded."""
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input {name!r} has {len(shape)} dimensions, over the limit of {MAX_DIMS}")
    count = 1
    for dim in shape:
        count *= dim
    if count > limits.max_tensor_elements:
        raise PayloadTooLarge(f"input {name!r} has {count} elements, over the limit of {limits.max_tensor_elements}")
    if shape and shape[0] > limits.max_batch_rows:
        raise PayloadTooLarge(f"input {name!r} has {shape[0]} rows, over the limit of {limits.max_batch_rows}")


def with_key_priority(request: InferRequest, key_priority: int | None) -> InferRequest:
    """The request with its API key's priority when the client named none (HTTP and gRPC alike)."""
    if key_priority is None or request.policy.priority is not None:
        return request
    return dataclasses.replace(request, policy=dataclasses.replace(request.policy, priority=key_priority))
