"""LLM batches in OpenAI's Batch format, as `vllm run_batch` reads and writes them.

In: one request per line, `{"custom_id", "method": "POST", "url": "/v1/chat/completions" or
"/v1/completions", "body": {...}}`. Out: one line per request, `{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}`; a request the server would refuse gets its 4xx
response here too. A line that is not a request at all goes to the errors file. Each batch of
requests goes to the engine at once and continuous batching schedules them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from mlserve.jobs.jsonl import LinesWriter, count_lines
from mlserve.jobs.rows import Chunk, RowFailure
from mlserve.jobs.runner import RowFormats
from mlserve.spec import ModelInfo, TensorSpec

if TYPE_CHECKING:
    from mlserve.batching.llm_engine import LLMEngine

URLS = {"/v1/chat/completions": True, "/v1/completions": False}
LINE_KEYS = {"custom_id", "method", "url", "body"}
REQUESTS_PER_BATCH = 256
REQUEST = TensorSpec("request", "BYTES", (-1,))
RESPONSE = TensorSpec("response", "BYTES", (-1,))


def batch_info(engine: LLMEngine, requests_per_batch: int = REQUESTS_PER_BATCH) -> ModelInfo:
    """Rows are whole requests: at most as many at once as the engine lets wait."""
    return ModelInfo("openai_batch", (REQUEST,), (RESPONSE,), min(requests_per_batch, engine.max_waiting))


def _parse_line(line: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != LINE_KEYS:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"a batch line has exactly the keys {sorted(LINE_KEYS)}, got {keys}")
    if not isinstance(obj["custom_id"], str) or obj["method"] != "POST" or obj["url"] not in URLS:
        raise ValueError(f"custom_id must be a string, method POST and url one of {sorted(URLS)}")
    if not isinstance(obj["body"], dict):
        raise ValueError("body must be a JSON object")
    return obj


class OpenAIBatchReader:
    """Request lines, one row each; position kept as a byte offset."""

    def __init__(self, path: Path, specs: tuple[TensorSpec, ...] = ()) -> None:
        self.num_rows: int | None = count_lines(path)
        self._fh = open(path, "rb")
        self._row = 0

    def seek(self, state: dict[str, Any]) -> None:
        self._fh.seek(int(state.get("offset", 0)))
        self._row = int(state.get("row", 0))

    def read(self, max_rows: int) -> Chunk | None:
        first, good, rows, failures = self._row, [], [], []
        while self._row - first < max_rows:
            line = self._fh.readline()
            if not line:
                break
            if not line.strip():
                continue
            try:
                good.append(_parse_line(line))
                rows.append(self._row)
            except ValueError as exc:
                failures.append(RowFailure(self._row, str(exc)))
            self._row += 1
        if self._row == first:
            return None
        requests = np.empty(len(good), dtype=object)
        requests[:] = good
        state = {"offset": self._fh.tell(), "row": self._row}
        return Chunk(first, self._row - first, np.asarray(rows, np.int64), {"request": requests}, failures, state)

    def close(self) -> None:
        self._fh.close()


class OpenAIBatchWriter(LinesWriter):
    """One response line per request, in input order."""

    def __init__(self, path: Path, specs: tuple[TensorSpec, ...] = ()) -> None:
        super().__init__(path)

    def write(self, rows: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        self._file.append(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in outputs["response"]))


OPENAI_FORMATS = RowFormats(OpenAIBatchReader, OpenAIBatchWriter, (".jsonl",))
"""A generation model reads and writes OpenAI batch files: JSON lines both ways."""
