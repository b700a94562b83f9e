"""ONNX Runtime backend: CPU, or the CUDA execution provider when asked for and present.

On CUDA a batch runs through IO binding: inputs are bound from the host arrays, outputs are bound
to the device, so ORT copies each input in once, keeps every intermediate and output on the GPU,
and the outputs come out in one copy at the end. session.run would instead let ORT choose where
outputs land and copy them per call through its own staging. On CPU plain session.run is the
default: IO binding gives the same answers there but costs more per call (benchmarks/onnx_binding.py).
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from mlserve.engine.base import StoppableInfer, find_artifact
from mlserve.engine.spec_check import merge_specs
from mlserve.errors import ModelLoadError
from mlserve.spec import ModelConfig, ModelInfo, TensorSpec

_ORT_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


_QUIET = 4
"""ORT's log severity for fatal messages only."""


def _spec(node: ort.NodeArg) -> TensorSpec:
    if node.type not in _ORT_TO_DATATYPE:
        raise ModelLoadError(f"tensor {node.name!r} has type {node.type}, which mlserve cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or []))
    return TensorSpec(node.name, _ORT_TO_DATATYPE[node.type], shape)


class IoBindingRunner:
    """Runs batches of one session through IO binding: inputs from host arrays, outputs allocated by
    ORT on (`device_type`, `device_id`) and copied to fresh host arrays once per batch. Each worker
    thread reuses its own binding object; bindings are cleared after every run so no batch's
    arrays outlive it."""

    def __init__(self, session: ort.InferenceSession, output_names: list[str], device_type: str,
                 device_id: int) -> None:
        self._session = session
        self._output_names = output_names
        self._device_type = device_type
        self._device_id = device_id
        self._local = threading.local()

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = getattr(self._local, "binding", None)
        if binding is None:
            binding = self._local.binding = self._session.io_binding()
        try:
            for name, array in feed.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
            for name in self._output_names:
                binding.bind_output(name, self._device_type, self._device_id)
            self._session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()
        finally:
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()


class OnnxBackend:
    """One ONNX model version in an onnxruntime InferenceSession.

    `io_binding`: None = IO binding on CUDA, plain session.run on CPU; True or False forces it
    (models with string tensors always use session.run: ORT binds strings on the host only)."""

    def __init__(self, config: ModelConfig, io_binding: bool | None = None) -> None:
        self._config = config
        self._session: ort.InferenceSession | None = None
        self._info: ModelInfo | None = None
        self._string_inputs: frozenset[str] = frozenset()
        self._io_binding = io_binding
        self._binder: IoBindingRunner | None = None
        self.runs_concurrently = False
        """Batches may run on two threads at once (a CPU session computing each on its calling thread)."""

    def load(self, path: Path, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._config.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        artifact = find_artifact(path, ("*.onnx",))
        try:
            self._session = ort.InferenceSession(str(artifact), options, providers=_providers(device))
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelLoadError(f"{artifact}: {exc}") from exc
        inputs = tuple(_spec(n) for n in self._session.get_inputs())
        outputs = tuple(_spec(n) for n in self._session.get_outputs())
        inputs, outputs = merge_specs(self._config, inputs, outputs)
        self._info = ModelInfo(
            "onnxruntime_onnx", inputs, outputs, self._config.batching.max_batch_size, utf8_strings=True
        )
        self._string_inputs = frozenset(s.name for s in inputs if s.datatype == "BYTES")
        on_cuda = device.startswith("cuda")
        has_strings = any(s.datatype == "BYTES" for s in (*inputs, *outputs))
        if (on_cuda if self._io_binding is None else self._io_binding) and not has_strings:
            index = int(device.partition(":")[2] or 0)
            names = [o.name for o in outputs]
            self._binder = IoBindingRunner(self._session, names, "cuda" if on_cuda else "cpu", index)
        # session.run is thread-safe and computes on its calling thread with one intra-op thread;
        # an IO binding is one set of buffers, so it is not
        self.runs_concurrently = not on_cuda and self._config.intra_op_threads == 1 and self._binder is None

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(inputs, None)

    @property
    def stoppable_infer(self) -> StoppableInfer | None:
        """An infer another thread can stop mid-run (batching/leash.py): CPU sessions without IO
        binding, whose terminate flag ORT reads between two nodes."""
        return self._infer_stoppable if self.runs_concurrently else None

    def _infer_stoppable(self, inputs: dict[str, np.ndarray],
                         arm: Callable[[Callable[[], None]], None]) -> dict[str, np.ndarray]:
        options = ort.RunOptions()
        options.log_severity_level = _QUIET  # a stopped run is no error; a failed one raises with its message
        arm(partial(setattr, options, "terminate", True))
        return self._run(inputs, options)

    def _run(self, inputs: dict[str, np.ndarray], options: ort.RunOptions | None) -> dict[str, np.ndarray]:
        assert self._session is not None, "infer before load"
        feed = {
            name: (_bytes_to_str(array) if name in self._string_inputs else array)
            for name, array in inputs.items()
        }
        names = [o.name for o in self._info.outputs]
        results = self._binder.run(feed) if self._binder is not None else self._session.run(names, feed, options)
        return {name: (_str_to_bytes(r) if r.dtype == object else r) for name, r in zip(names, results)}

    def unload(self) -> None:
        self._binder = None
        self._session = None

    @property
    def is_io_bound(self) -> bool:
        """Whether batches run through IO binding (see the module note)."""
        return self._binder is not None

    @property
    def info(self) -> ModelInfo:
        assert self._info is not None, "info before load"
        return self._info


def _providers(device: str) -> list:
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelLoadError("device is cuda but this onnxruntime has no CUDAExecutionProvider")
    index = int(device.partition(":")[2] or 0)
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def _bytes_to_str(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    out.flat[:] = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in array.flat]
    return out


def _str_to_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    out.flat[:] = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in array.flat]
    return out
