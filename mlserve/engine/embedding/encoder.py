"""A BERT encoder forward (embeddings, post-norm layers) from a Hugging Face `config.json` and safetensors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

SUPPORTED_TYPES = ("bert",)
# config.json keys that change the math and that this forward does not implement, with the value it assumes.
_ASSUMED = {"hidden_act": "gelu", "position_embedding_type": "absolute"}


@dataclass(frozen=True, slots=True)
class EncoderShape:
    num_layers: int
    hidden: int
    num_heads: int
    layer_norm_eps: float
    max_position: int

    @classmethod
    def read(cls, version_dir: Path) -> EncoderShape:
        config = json.loads((version_dir / "config.json").read_text())
        if config.get("model_type") not in SUPPORTED_TYPES:
            raise ValueError(f"model_type {config.get('model_type')!r} is not an encoder mlserve runs "
                             f"(supported: {', '.join(SUPPORTED_TYPES)})")
        for key, value in _ASSUMED.items():
            if config.get(key, value) != value:
                raise ValueError(f"config.json {key}={config[key]!r} is not supported (only {value!r})")
        return cls(config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
                   float(config.get("layer_norm_eps", 1e-12)), config["max_position_embeddings"])


class Encoder:
    """Weights by name and a forward: token ids [B, T] and mask [B, T] -> last hidden state [B, T, H]."""

    def __init__(self, version_dir: Path, shape: EncoderShape) -> None:
        self.shape = shape
        weights = load_file(str(_weights_file(version_dir)))
        prefix = "bert." if any(k.startswith("bert.") for k in weights) else ""
        self.w = {k[len(prefix):]: v.float() for k, v in weights.items() if k.startswith(prefix)}
        self.w.pop("embeddings.position_ids", None)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w, eps = self.w, self.shape.layer_norm_eps
        positions = torch.arange(input_ids.shape[1])
        x = (w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.position_embeddings.weight"][positions]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = F.layer_norm(x, (self.shape.hidden,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        # Additive mask [B, 1, 1, T]: padded keys get -inf-like scores.
        bias = torch.zeros_like(mask, dtype=x.dtype).masked_fill(~mask, torch.finfo(x.dtype).min)[:, None, None, :]
        for i in range(self.shape.num_layers):
            x = self._layer(x, bias, f"encoder.layer.{i}.")
        return x

    def _layer(self, x: torch.Tensor, bias: torch.Tensor, p: str) -> torch.Tensor:
        w, eps, heads, hidden = self.w, self.shape.layer_norm_eps, self.shape.num_heads, self.shape.hidden
        batch = x.shape[0]

        def project(name: str) -> torch.Tensor:  # [B, T, H] -> [B, heads, T, H / heads]
            y = F.linear(x, w[f"{p}attention.self.{name}.weight"], w[f"{p}attention.self.{name}.bias"])
            return y.view(batch, -1, heads, hidden // heads).transpose(1, 2)

        attn = F.scaled_dot_product_attention(project("query"), project("key"), project("value"), attn_mask=bias)
        attn = attn.transpose(1, 2).reshape(batch, -1, hidden)
        attn = F.linear(attn, w[f"{p}attention.output.dense.weight"], w[f"{p}attention.output.dense.bias"])
        x = F.layer_norm(attn + x, (hidden,), w[f"{p}attention.output.LayerNorm.weight"],
                         w[f"{p}attention.output.LayerNorm.bias"], eps)
        h = F.gelu(F.linear(x, w[f"{p}intermediate.dense.weight"], w[f"{p}intermediate.dense.bias"]))
        h = F.linear(h, w[f"{p}output.dense.weight"], w[f"{p}output.dense.bias"])
        return F.layer_norm(h + x, (hidden,), w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"], eps)


def _weights_file(version_dir: Path) -> Path:
    found = sorted(version_dir.glob("*.safetensors"))
    if len(found) != 1:
        raise FileNotFoundError(f"an encoder folder needs exactly one .safetensors file, found {len(found)}")
    return found[0]
