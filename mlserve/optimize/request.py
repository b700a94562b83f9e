"""The admin route's JSON body to an OptimizeRequest, and the request to and from the file a job's
child process reads. Every key is checked: an unknown one is refused by name."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlserve.errors import InvalidInput
from mlserve.optimize import parse_passes
from mlserve.optimize.base import Options
from mlserve.optimize.evaluate import Budget
from mlserve.optimize.gate import GateSettings
from mlserve.optimize.pipeline import OptimizeRequest

_KEYS = {"version", "passes", "data", "objective", "max_top1_drop", "max_abs_diff", "max_metric_drop", "min_gain",
         "min_cosine",
         "sparsity", "calibration_rows", "timing_s", "publish", "rollout",
         "distill_width", "distill_steps", "distill_time_s", "distill_seed"}


# Every number the body may set, with the range a run can honour in bounded time and memory.
BOUNDS: dict[str, tuple[float, float]] = {
    "max_top1_drop": (0.0, 1.0), "max_abs_diff": (0.0, 1e6), "max_metric_drop": (0.0, 1.0),
    "min_gain": (1.0, 100.0), "min_cosine": (-1.0, 1.0), "sparsity": (0.0, 1.0),
    "calibration_rows": (1, 100_000), "timing_s": (0.01, 60.0),
    "distill_width": (0.01, 0.99), "distill_steps": (1, 1_000_000), "distill_time_s": (1.0, 3600.0),
    "distill_seed": (0, 2**31 - 1),
}
MAX_VERSION = 2**31 - 1


def _number(raw: dict, key: str, default):
    value = raw.get(key, default)
    if value is None:
        return None
    low, high = BOUNDS[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"optimize: {key!r} must be a number in [{low}, {high}], got {value!r}")
    return value


def parse_body(raw: Any, model: str, models: Path, trust_repository: bool = False,
               trust_uploads: bool = False) -> tuple[OptimizeRequest, dict | None]:
    """The request, and the rollout plan body (for the rollout API) when one was asked for."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise InvalidInput("optimize takes a JSON object")
    unknown = set(raw) - _KEYS
    if unknown:
        raise InvalidInput(f"optimize: unknown key(s) {', '.join(sorted(unknown))}")
    version = raw.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)
                                or not 1 <= version <= MAX_VERSION):
        raise InvalidInput(f"optimize: 'version' must be an integer in [1, {MAX_VERSION}]")
    data = raw.get("data")
    if data is not None and (not isinstance(data, str) or "/" in data or data.startswith(".")):
        raise InvalidInput("optimize: 'data' names an .npz file in the source version folder")
    if not isinstance(raw.get("publish", True), bool):
        raise InvalidInput("optimize: 'publish' must be true or false")
    passes = raw.get("passes")
    if passes is not None and not (isinstance(passes, str) or (
            isinstance(passes, list) and all(isinstance(p, str) for p in passes))):
        raise InvalidInput("optimize: 'passes' must be a list of pass names (or one comma-separated string)")
    try:
        gate = GateSettings(_number(raw, "max_top1_drop", 0.01), _number(raw, "max_abs_diff", None),
                            _number(raw, "max_metric_drop", 0.01), raw.get("objective", "throughput"),
                            _number(raw, "min_gain", 1.05), _number(raw, "min_cosine", None))
        passes = parse_passes(passes)
    except ValueError as exc:
        raise InvalidInput(f"optimize: {exc}") from None
    sparsity = _number(raw, "sparsity", 0.3)
    if not 0 < sparsity < 1:
        raise InvalidInput("optimize: 'sparsity' must lie in (0, 1)")
    calibration_rows = _number(raw, "calibration_rows", 256)
    if calibration_rows != int(calibration_rows):
        raise InvalidInput(f"optimize: 'calibration_rows' must be a whole number, got {calibration_rows!r}")
    whole = {k: _number(raw, k, d) for k, d in (("distill_steps", 2000), ("distill_seed", 0))}
    for key, value in whole.items():
        if value != int(value):
            raise InvalidInput(f"optimize: {key!r} must be a whole number, got {value!r}")
    options = Options(sparsity=sparsity, calibration_rows=int(calibration_rows),
                      distill_width=_number(raw, "distill_width", 0.5), distill_steps=int(whole["distill_steps"]),
                      distill_time_s=_number(raw, "distill_time_s", 60.0), distill_seed=int(whole["distill_seed"]))
    if data is not None:
        from mlserve.optimize.source import version_numbers

        numbers = version_numbers(models / model) if (models / model).is_dir() else []
        chosen = version or (numbers[-1] if numbers else 1)
        data = models / model / str(chosen) / data
    request = OptimizeRequest(model, models, version, None, data, passes, options, gate,
                              Budget(latency_s=_number(raw, "timing_s", 1.0)), raw.get("publish", True),
                              trust_repository, trust_uploads)
    return request, _rollout(raw.get("rollout"))


def _rollout(raw: Any) -> dict | None:
    if raw is None:
        return None
    if isinstance(raw, list):
        return {"steps": raw}
    if isinstance(raw, dict) and "version" not in raw:
        return raw
    raise InvalidInput("optimize: 'rollout' is a list of percents or a rollout plan without 'version'")


def to_json(request: OptimizeRequest) -> dict:
    body = asdict(request)
    for key in ("models", "file", "data"):
        body[key] = None if body[key] is None else str(body[key])
    body["passes"] = list(request.passes)
    return body


def from_json(body: dict) -> OptimizeRequest:
    paths = {k: (None if body[k] is None else Path(body[k])) for k in ("models", "file", "data")}
    return OptimizeRequest(
        model=body["model"], version=body["version"], passes=tuple(body["passes"]),
        options=Options(**body["options"]), gate=GateSettings(**body["gate"]), budget=Budget(**body["budget"]),
        publish=body["publish"], trust_repository=body.get("trust_repository", False),
        trust_uploads=body.get("trust_uploads", False), **paths,
    )
