"""What a Hugging Face checkpoint may ask of the engine: config keys that change the math are either
implemented here or refused by name, and every tensor in the files must be one the model consumes.

Implemented beyond plain Llama: Qwen2's q/k/v biases, Llama's `attention_bias`, `rope_theta` (from
`rope_theta` or transformers 5's `rope_parameters`), and sliding windows (Mistral, Qwen2 with
`use_sliding_window`) by capping the context at the window, where sliding and full attention agree.
"""

from __future__ import annotations

from typing import Any, Iterable

LLAMA_FAMILY = ("llama", "mistral", "qwen2")

# Buffers some checkpoints carry that the engine computes itself (same values by construction):
# Llama's rotary frequencies, GPT-2's causal mask.
COMPUTED_BUFFERS = {"llama": ("rotary_emb.inv_freq",), "gpt2": (".attn.bias", ".attn.masked_bias")}


def _refuse(key: str, value: Any, why: str) -> ValueError:
    return ValueError(f"config.json {key} = {value!r}: {why}; this engine would compute a different model")


def rope_theta(config: dict[str, Any]) -> float:
    """The rotary base; refuses any rope type but the default (linear, dynamic, yarn, llama3 scaling)."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling")
    for key, table in (("rope_parameters", params), ("rope_scaling", scaling or {})):
        kind = table.get("rope_type", table.get("type", "default")) if isinstance(table, dict) else table
        if kind not in (None, "default"):
            raise _refuse(f"{key}.rope_type", kind, "RoPE scaling is not implemented")
    if scaling is not None and not isinstance(scaling, dict):
        raise _refuse("rope_scaling", scaling, "RoPE scaling is not implemented")
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def attention_window(config: dict[str, Any]) -> int | None:
    """The sliding window that applies, if any (Mistral always, Qwen2 when use_sliding_window)."""
    window = config.get("sliding_window")
    applies = config.get("model_type") == "mistral" or bool(config.get("use_sliding_window"))
    return int(window) if applies and window else None


def check_llama_config(config: dict[str, Any]) -> None:
    """Refuse Llama-family settings the model code does not implement, naming the key."""
    if config.get("hidden_act", "silu") != "silu":
        raise _refuse("hidden_act", config["hidden_act"], "only silu is implemented")
    if config.get("mlp_bias"):
        raise _refuse("mlp_bias", True, "MLP biases are not implemented")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise _refuse("partial_rotary_factor", config["partial_rotary_factor"], "partial RoPE is not implemented")
    rope_theta(config)


def check_gpt2_config(config: dict[str, Any]) -> None:
    """Refuse GPT-2 settings the model code does not implement, naming the key."""
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise _refuse("activation_function", config["activation_function"], "only gelu_new is implemented")
    if config.get("scale_attn_by_inverse_layer_idx"):
        raise _refuse("scale_attn_by_inverse_layer_idx", True, "not implemented")
    if config.get("scale_attn_weights", True) is not True:
        raise _refuse("scale_attn_weights", config["scale_attn_weights"], "unscaled attention is not implemented")


def check_unused(names: Iterable[str], wanted: set[str], arch: str) -> None:
    """Every tensor in the checkpoint must be one the model reads (or a buffer it computes)."""
    computed = COMPUTED_BUFFERS.get(arch, ())
    unused = sorted(n for n in names if n not in wanted and not n.endswith(computed))
    if unused:
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        raise ValueError(f"checkpoint has {len(unused)} tensor(s) this engine's model code does not use "
                         f"({shown}); it would compute a different model")
