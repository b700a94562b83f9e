"""The model.toml of a registered model, made from its aliases, its champion's `mlserve.toml` tag and
its MLmodel signature; and the `[challenger]` table that says how a `@challenger` is tried.

    [challenger]                       # in the champion version's mlserve.toml tag; every key optional
    mode = "rollout"                   # or "split": a fixed split with an experiment, nothing automatic
    steps = [5, 25, 50, 100]           # rollout: the canary's shares (percent)
    interval_s = 60                    # rollout: the dwell time of each step
    max_error_rate_increase = 0.01     # rollout: a breach rolls back
    max_p99_ratio = 1.5
    min_requests = 20
    percent = 10                       # split: the challenger's share

An `[optimize]` section with `rollout` steps gives the plan its steps and interval (an automatic
run's winner is registered as the `@challenger`: optimize/auto.py).

The aliases own which versions load and the split between them: `version_policy` and a `[traffic]`
`split` in the tag are refused. The split is 100% champion (with a challenger in rollout mode too:
the rollout moves it), or `percent` to the challenger in split mode. Why always a split, and not
"the newest loaded version": after a rollback the rolled-back challenger is still loaded until the
pass that unloads it, and must get nothing meanwhile; while a new champion loads, its requests go
to the old one through the fallback (counted in mlserve_fallback_requests_total).

The text is written by a small TOML writer (`to_toml`) from the tag's parsed table, so a tag with its
own `[traffic]` keys merges with the split instead of colliding with it.
"""

from __future__ import annotations

import datetime
import math
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

import orjson

from mlserve.errors import ModelLoadError
from mlserve.spec.mlmodel import MlModel
from mlserve.spec.optimize import OptimizeSettings
from mlserve.spec.table import between, parse_table
from mlserve.spec.tensor import TensorSpec

MAX_TAG_BYTES = 64 << 10
ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
"""What MLflow (and mlserve's settings) accept as an alias name."""
MODES = ("rollout", "split")


@dataclass(frozen=True, slots=True)
class ChallengerSpec:
    """The champion's `[challenger]` table: how a `@challenger` version is tried against it."""

    mode: str = "rollout"
    """rollout: a canary rollout (breach: rolled back, the alias cleared; last step: promoted, the
    champion alias moved to it). split: a fixed split with an experiment; a person decides."""
    steps: tuple[float, ...] = field(default=(5.0, 25.0, 50.0, 100.0), metadata=between(0.001, 100))
    interval_s: float = field(default=60.0, metadata=between(0, 86400))
    max_error_rate_increase: float = field(default=0.01, metadata=between(0, 1))
    max_p99_ratio: float = field(default=1.5, metadata=between(0, 1e6))
    min_requests: int = field(default=20, metadata=between(0, 10_000_000))
    percent: float = field(default=10.0, metadata=between(0.001, 99.999))
    """split: the challenger's share of unversioned requests."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.steps or list(self.steps) != sorted(self.steps):
            raise ValueError("steps must be a non-empty list of percents that does not decrease")

    def rollout_body(self, version: int) -> dict[str, Any]:
        """The body of POST /admin/models/{m}/rollout for this challenger."""
        return {"version": str(version), "steps": list(self.steps), "interval_s": self.interval_s,
                "max_error_rate_increase": self.max_error_rate_increase, "max_p99_ratio": self.max_p99_ratio,
                "min_requests": self.min_requests}


@dataclass(frozen=True, slots=True)
class Challenge:
    """A registered model's champion and challenger as last listed, and how the challenger is tried."""

    champion: int
    challenger: int
    spec: ChallengerSpec


def model_toml(version: int, tag_text: str | None, mlmodel: MlModel, where: str,
               challenger: int | None = None) -> tuple[str, ChallengerSpec]:
    """The model.toml text of a registered model whose champion is `version`, and its challenger
    settings; ModelLoadError names what in the tag is wrong."""
    declared = _parse_tag(tag_text or "", where)
    spec = _challenger_spec(declared, where)
    table: dict[str, Any] = {"version_policy": {"specific": sorted({version, challenger or version})}, **declared}
    traffic = declared.get("traffic", {})
    split = {str(version): 100.0}
    if challenger is not None and challenger != version:
        if spec.mode == "rollout" and "bandit" in traffic:
            raise ModelLoadError(f"{where}: a [traffic] bandit owns the split, so a challenger cannot be rolled "
                                 "out; set [challenger] mode = \"split\"")
        if spec.mode == "split":
            split = {str(version): 100.0 - spec.percent, str(challenger): spec.percent}
    elif "bandit" in traffic:
        split = {}  # a bandit with one arm is no bandit: it keeps every ready version as its arms
    if split:
        table["traffic"] = {**traffic, "split": split}
    for key, specs in (("inputs", mlmodel.inputs), ("outputs", mlmodel.outputs)):
        if key not in declared and specs:
            table[key] = [_tensor_table(s) for s in specs]
    return to_toml(table), spec


def check_tag(text: str, where: str) -> None:
    """A `mlserve.toml` tag's text as the store will read it (ModelLoadError naming the fault)."""
    _challenger_spec(_parse_tag(text, where), where)


def _challenger_spec(declared: dict[str, Any], where: str) -> ChallengerSpec:
    """The [challenger] table (taken out of `declared`). An `[optimize]` section with rollout steps
    gives the plan its steps and interval, since the optimized version is rolled out as the
    `@challenger`; a [challenger] table that also gives them (or mode) is refused."""
    table = declared.pop("challenger", None)
    optimize = declared.get("optimize")
    try:
        if isinstance(optimize, dict) and optimize.get("rollout") and (table is None or isinstance(table, dict)):
            settings = OptimizeSettings.parse(optimize)
            given = [key for key in ("mode", "steps", "interval_s") if key in (table or {})]
            if given:
                raise ValueError(f"[optimize] rollout and [challenger] {', '.join(given)} both say how a "
                                 "challenger is rolled out; give the plan in one of them")
            table = {**(table or {}), "steps": list(settings.rollout), "interval_s": settings.rollout_interval_s}
        return parse_table(ChallengerSpec, table, "[challenger]")
    except ValueError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None


def _parse_tag(text: str, where: str) -> dict[str, Any]:
    if len(text.encode()) > MAX_TAG_BYTES:
        raise ModelLoadError(f"{where}: over {MAX_TAG_BYTES} bytes")
    try:
        declared = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    if "version_policy" in declared:
        raise ModelLoadError(f"{where}: version_policy is not allowed here: the MLflow alias picks the version")
    traffic = declared.get("traffic")
    if traffic is not None and not isinstance(traffic, dict):
        raise ModelLoadError(f"{where}: traffic must be a table")
    if traffic and "split" in traffic:
        raise ModelLoadError(f"{where}: [traffic] split is not allowed here: the MLflow aliases (champion, "
                             "challenger and the [challenger] table) pick the split")
    return declared


def _tensor_table(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


# ---- a TOML writer for parsed TOML values --------------------------------------------------------


def to_toml(table: dict[str, Any]) -> str:
    """Every top-level key as `key = value`, tables inline: enough for what tomllib parsed."""
    return "".join(f"{_key(k)} = {_value(v)}\n" for k, v in table.items())


def _key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else orjson.dumps(key).decode()


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")) if not math.isfinite(value) \
            else repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()  # JSON's escapes are TOML's basic-string escapes
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")
