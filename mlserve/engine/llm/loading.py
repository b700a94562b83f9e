"""Builds a model from a Hugging Face folder: config.json and *.safetensors, nothing pickled."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from mlserve.engine.llm.checkpoint import check_unused
from mlserve.engine.llm.gpt2 import GPT2LMHeadModel
from mlserve.engine.llm.model import LlamaForCausalLM, ModelShape


def read_shape(version_dir: Path) -> ModelShape:
    return ModelShape.from_hf(json.loads((version_dir / "config.json").read_text()))


def load_model(version_dir: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    shape = read_shape(version_dir)
    with torch.device("meta"):
        model = LlamaForCausalLM(shape) if shape.arch == "llama" else GPT2LMHeadModel(shape)
    files = sorted(version_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {version_dir}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file), device="cpu"))
    if shape.arch == "gpt2":
        state = {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": t for k, t in state.items()}
    wanted = {k for k in model.state_dict()}
    if shape.tie_embeddings:
        wanted.discard("lm_head.weight")
        _check_tied_head(state)
    check_unused(state, wanted, shape.arch)
    missing = wanted - set(state)
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} tensor(s), e.g. {sorted(missing)[:3]}")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False, assign=True)
    if "lm_head.weight" not in wanted:
        model.tie_weights()
    for name, buffer in model.named_buffers():
        if buffer.is_meta:
            _rebuild_buffer(model, name, shape)
    return model.to(device=device, dtype=dtype).eval()


def _check_tied_head(state: dict[str, torch.Tensor]) -> None:
    """A tied checkpoint may still store lm_head.weight; it must then equal the embedding it is tied to."""
    head = state.pop("lm_head.weight", None)
    embedding = state.get("model.embed_tokens.weight", state.get("transformer.wte.weight"))
    if head is not None and (embedding is None or not torch.equal(head, embedding)):
        raise ValueError("tie_word_embeddings is true but lm_head.weight differs from the embedding; "
                         "this engine would compute a different model")


def _rebuild_buffer(model: torch.nn.Module, name: str, shape: ModelShape) -> None:
    """Non-persistent buffers (the rotary frequencies) are computed, not read."""
    module_name, _, buffer_name = name.rpartition(".")
    module = model.get_submodule(module_name)
    dim = shape.head_dim
    value = 1.0 / (shape.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    module.register_buffer(buffer_name, value, persistent=False)
