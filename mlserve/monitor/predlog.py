"""The sampled prediction log: JSON lines written by one background thread, rotated by size.

The request path only decides whether to sample and puts a frozen record on a bounded queue
(`put_nowait`): a full queue (slow disk) or a failed write (full disk) drops the record and counts
it, and never makes a request wait. `close()` drains the queue and flushes, so a graceful
shutdown loses nothing that was sampled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlserve.monitor.metrics import Metrics

log = logging.getLogger("mlserve.predlog")

FILE_NAME = "predictions.jsonl"


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One answered request as the log keeps it."""

    req_id: str
    time: float
    """Unix time the response was ready."""
    model: str
    version: str
    routed_by: str
    latency_s: float
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class PredictionLogSettings:
    directory: Path
    sample_rate: float
    log_inputs: str = "hash"
    """hash: a SHA-256 per input tensor; full: the values."""
    max_bytes: int = 64 * 2**20
    max_files: int = 10
    queue_size: int = 10000


def _tensor_json(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.flat]
    return array.tolist()


def _tensor_hash(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    if array.dtype == object:
        for value in array.flat:
            digest.update(value if isinstance(value, bytes) else str(value).encode())
    else:
        digest.update(np.ascontiguousarray(array).tobytes())
    return "sha256:" + digest.hexdigest()


def encode_record(record: PredictionRecord, log_inputs: str) -> bytes:
    """One JSON line."""
    inputs = {
        name: (_tensor_json(a) if log_inputs == "full" else _tensor_hash(a)) for name, a in record.inputs.items()
    }
    line = {
        "id": record.req_id, "time": record.time, "model": record.model, "version": record.version,
        "routed_by": record.routed_by, "latency_s": record.latency_s, "inputs": inputs,
        "outputs": {name: _tensor_json(a) for name, a in record.outputs.items()},
    }
    return orjson.dumps(line) + b"\n"


class PredictionLog:
    """Owns the sampling decision, the bounded queue and the writer thread."""

    _STOP = object()

    def __init__(self, settings: PredictionLogSettings, metrics: Metrics) -> None:
        self.settings = settings
        self._metrics = metrics
        self._queue: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        self._thread = threading.Thread(target=self._write_loop, name="mlserve-predlog", daemon=True)
        self._file = None
        self._size = 0

    def start(self) -> None:
        self.settings.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        log.info("prediction log in %s, sampling %.4g of requests", self.settings.directory, self.settings.sample_rate)

    def should_sample(self) -> bool:
        rate = self.settings.sample_rate
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)

    def record(self, record: PredictionRecord) -> None:
        """Queue one sampled record; drops (and counts) instead of waiting."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._metrics.prediction_log_dropped.labels("queue_full").inc()

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, flush and close the file."""
        if not self._thread.is_alive():
            return
        self._queue.put(self._STOP)
        self._thread.join(timeout)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while item is not self._STOP and len(batch) < 1024:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
            records = [r for r in batch if r is not self._STOP]
            self._write(records)
            self._metrics.prediction_log_queue.set(self._queue.qsize())
            if len(records) != len(batch):
                self._close_file()
                return

    def _write(self, records: list[PredictionRecord]) -> None:
        """Write a run of records, rotating between lines so no file grows past max_bytes."""
        if not records:
            return
        lines = [encode_record(r, self.settings.log_inputs) for r in records]
        written = 0
        try:
            while written < len(lines):
                self._open_or_rotate(len(lines[written]))
                room = self.settings.max_bytes - self._size
                end, size = written, 0
                while end < len(lines) and (end == written or size + len(lines[end]) <= room):
                    size += len(lines[end])
                    end += 1
                self._file.write(b"".join(lines[written:end]))
                self._file.flush()
                self._size += size
                written = end
        except OSError as exc:
            self._metrics.prediction_log_dropped.labels("write_error").inc(len(lines) - written)
            log.error("prediction log: dropped %d record(s): %s", len(lines) - written, exc)
            self._close_file()
        self._metrics.prediction_log_records.inc(written)

    def _open_or_rotate(self, incoming: int) -> None:
        path = self.settings.directory / FILE_NAME
        if self._file is not None and self._size > 0 and self._size + incoming > self.settings.max_bytes:
            self._close_file()
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            os.replace(path, self._rotated_name(stamp))
            self._prune()
        if self._file is None:
            self._file = open(path, "ab")
            self._size = self._file.tell()

    def _rotated_name(self, stamp: str) -> Path:
        n = 0
        while (candidate := self.settings.directory / f"predictions-{stamp}-{n}.jsonl").exists():
            n += 1
        return candidate

    def _prune(self) -> None:
        rotated = sorted(self.settings.directory.glob("predictions-*.jsonl"))
        for old in rotated[: max(0, len(rotated) - (self.settings.max_files - 1))]:
            old.unlink(missing_ok=True)

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
