"""Plain descriptions every layer may import: tensors, model.toml and its sections, generation
requests. Imports nothing of mlserve but `errors`, and nothing heavy (no torch, no aiohttp)."""

from mlserve.spec.drift import DriftSettings
from mlserve.spec.generation import (
    GenerationRequest, RequestHandle, Sampled, SamplingParams, SeqChunk, TokenEvent, TokenLimits,
)
from mlserve.spec.llm import LLMSettings
from mlserve.spec.model import (
    BACKENDS, MODEL_NAME, BatchingSpec, ModelConfig, VersionPolicy, WarmupSpec, parse_model_config,
    read_model_config,
)
from mlserve.spec.optimize import OptimizeSettings
from mlserve.spec.precision import TorchSettings
from mlserve.spec.schedule import SchedulePolicy
from mlserve.spec.table import check_value, parse_table
from mlserve.spec.tensor import DATATYPE_TO_NUMPY, ModelInfo, NUMPY_TO_DATATYPE, TensorSpec
from mlserve.spec.traffic import (BanditSpec, BreakerSpec, ExperimentSpec, ShadowSpec, StickyKey, TrafficSpec,
                                  parse_split)
from mlserve.spec.version import MAX_VERSION, parse_version, version_number

__all__ = [
    "BACKENDS", "BanditSpec", "DATATYPE_TO_NUMPY", "MAX_VERSION", "MODEL_NAME", "NUMPY_TO_DATATYPE", "BatchingSpec", "BreakerSpec",
    "DriftSettings", "ExperimentSpec", "GenerationRequest", "RequestHandle", "TokenEvent", "LLMSettings", "ModelConfig", "ModelInfo", "OptimizeSettings", "Sampled", "SamplingParams",
    "SchedulePolicy", "SeqChunk", "ShadowSpec", "StickyKey", "TensorSpec", "TokenLimits", "TorchSettings", "TrafficSpec", "VersionPolicy", "WarmupSpec",
    "check_value", "parse_model_config", "parse_split", "parse_version", "parse_table", "read_model_config",
    "version_number",
]
