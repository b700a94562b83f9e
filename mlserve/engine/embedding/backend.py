"""The embedding backend: a sentence-transformers folder (BERT encoder, pooling, normalize) behind the
Backend protocol, so the dynamic batcher, v2 infer and /v1/embeddings all serve it. The encoder runs
from `encoder.onnx` with ONNX Runtime when the folder has one (about 2x faster on CPU), else as
mlserve's own PyTorch forward from the safetensors.

One BYTES input `text`: each element is UTF-8 text, or token ids given as a 0x00 byte followed by
little-endian int32 ids (what /v1/embeddings sends for token-array inputs; ids are used as given)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from mlserve.engine.embedding.encoder import Encoder, EncoderShape
from mlserve.engine.threads import use_process_threads
from mlserve.errors import InvalidInput, ModelLoadError
from mlserve.spec import ModelConfig, ModelInfo, TensorSpec
from mlserve.spec.embedding import TOKEN_IDS_MARK

PLATFORM = "mlserve_embedding"
ONNX_NAME = "encoder.onnx"
"""(input_ids [B, T] int64, attention_mask [B, T] int64) -> last hidden state [B, T, H]."""
POOLING_MODES = ("pooling_mode_mean_tokens", "pooling_mode_cls_token")
ROWS_PER_FORWARD = 8


class EmbeddingBackend:
    """Tokenizer, encoder weights, pooling mode and the normalize flag of one loaded version."""

    def __init__(self, config: ModelConfig) -> None:
        self._config = config
        self._encoder: Encoder | None = None
        self._tokenizer: Tokenizer | None = None
        self.max_seq_length = 0
        self.vocab_size = 0
        self.dimensions = 0
        self._pooling = "pooling_mode_mean_tokens"
        self._normalize = False

    def load(self, path: Path, device: str) -> None:
        if device != "cpu":
            raise ModelLoadError(f"{path}: the embedding backend runs on cpu only, not {device}")
        try:
            shape = EncoderShape.read(path)
            self._read_sentence_config(path, shape)
            self._encoder = _OnnxEncoder(path / ONNX_NAME, self._config.intra_op_threads) \
                if (path / ONNX_NAME).is_file() else Encoder(path, shape)
            self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        except (ValueError, KeyError, FileNotFoundError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_seq_length)
        self.vocab_size = self._tokenizer.get_vocab_size()
        self.dimensions = shape.hidden
        if not isinstance(self._encoder, _OnnxEncoder):  # an ONNX encoder has its own session threads
            use_process_threads(self._config.intra_op_threads, str(path))

    def _read_sentence_config(self, path: Path, shape: EncoderShape) -> None:
        modules = json.loads((path / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
        if unknown:
            raise ValueError(f"modules.json: module(s) {unknown} are not supported")
        self._normalize = "Normalize" in kinds
        pooling_dir = next((m["path"] for m in modules if m["type"].endswith("Pooling")), None)
        if pooling_dir is not None:
            pooling = json.loads((path / pooling_dir / "config.json").read_text())
            modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
            if len(modes) != 1 or modes[0] not in POOLING_MODES:
                raise ValueError(f"pooling {modes} is not supported (one of {', '.join(POOLING_MODES)})")
            self._pooling = modes[0]
        bert_config = path / "sentence_bert_config.json"
        settings = json.loads(bert_config.read_text()) if bert_config.is_file() else {}
        self.max_seq_length = min(int(settings.get("max_seq_length", shape.max_position)), shape.max_position)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._encoder is not None, "infer before load"
        rows = [self._token_ids(element) for element in inputs["text"].reshape(-1)]
        # Rows sorted by length and run in groups, so a short sentence is not padded to the longest one.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pooled = torch.empty((len(rows), self.dimensions))
        for start in range(0, len(order), ROWS_PER_FORWARD):
            group = order[start:start + ROWS_PER_FORWARD]
            pooled[group] = self._embed([rows[i] for i in group])
        return {"embedding": pooled.numpy(), "num_tokens": np.asarray([len(r) for r in rows], dtype=np.int32)}

    def _embed(self, rows: list[list[int]]) -> torch.Tensor:
        longest = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), longest), dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = True
        hidden = self._encoder.forward(ids, mask)  # [B, T, H]
        if self._pooling == "pooling_mode_cls_token":
            pooled = hidden[:, 0]
        else:
            weights = mask[:, :, None].to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self._normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def _token_ids(self, element: bytes | str) -> list[int]:
        if isinstance(element, str):
            return self._tokenizer.encode(element).ids
        if element[:1] == TOKEN_IDS_MARK:
            if (len(element) - 1) % 4:
                raise InvalidInput(f"input 'text': a token-id element holds little-endian INT32 ids (4 bytes "
                                   f"each) after its mark; {len(element) - 1} bytes is not a whole number of ids")
            ids = np.frombuffer(element[1:], dtype="<i4")
            if ids.size == 0 or ids.min() < 0 or ids.max() >= self.vocab_size:
                raise InvalidInput(f"token ids must be a non-empty list of integers in [0, {self.vocab_size})")
            return ids[:self.max_seq_length].tolist()
        try:
            text = element.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("input 'text' must hold UTF-8 text") from None
        return self._tokenizer.encode(text).ids

    def unload(self) -> None:
        self._encoder = None
        self._tokenizer = None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            PLATFORM, (TensorSpec("text", "BYTES", (-1,)),),
            (TensorSpec("embedding", "FP32", (-1, self.dimensions)), TensorSpec("num_tokens", "INT32", (-1,))),
            self._config.batching.max_batch_size,
        )


class _OnnxEncoder:
    """The exported encoder (`encoder.onnx`, as `mlserve examples` writes it) run by ONNX Runtime."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(threads, 0)
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feed = {"input_ids": input_ids.numpy(), "attention_mask": mask.to(torch.long).numpy()}
        return torch.from_numpy(self._session.run(None, feed)[0])
