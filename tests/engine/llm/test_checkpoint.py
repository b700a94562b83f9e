"""Checkpoints the engine must not load wrong: Qwen2 biases and Mistral windows computed as
transformers computes them, and every setting or tensor the model code does not implement refused
by name."""

from __future__ import annotations

import asyncio
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mlserve.batching.llm_engine import LLMEngine
from mlserve.engine.llm.backend import LLMBackend
from mlserve.engine.llm.model import ModelShape
from mlserve.engine.llm.sequence import SamplingParams
from mlserve.errors import ModelLoadError
from mlserve.spec import ModelConfig
from tests.reference import hf_greedy

LLAMA = {
    "model_type": "llama", "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512,
}


@pytest.mark.parametrize("extra, needle", [
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling.rope_type = 'linear'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling.rope_type = 'llama3'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6}}, "rope_parameters.rope_type = 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act = 'gelu'"),
    ({"mlp_bias": True}, "mlp_bias = True"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor = 0.5"),
])
def test_llama_settings_that_are_not_implemented_are_refused_by_name(extra, needle):
    with pytest.raises(ValueError, match="this engine would compute a different model") as caught:
        ModelShape.from_hf({**LLAMA, **extra})
    assert needle in str(caught.value)


def test_gpt2_settings_that_are_not_implemented_are_refused_by_name():
    gpt2 = {"model_type": "gpt2", "vocab_size": 512, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512}
    ModelShape.from_hf(gpt2)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        ModelShape.from_hf({**gpt2, "scale_attn_by_inverse_layer_idx": True})
    with pytest.raises(ValueError, match="activation_function = 'relu'"):
        ModelShape.from_hf({**gpt2, "activation_function": "relu"})


def test_rope_theta_is_read_from_transformers_5_rope_parameters():
    shape = ModelShape.from_hf({**LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}})
    assert shape.rope_theta == 500000.0
    assert ModelShape.from_hf({**LLAMA, "rope_theta": 1e6, "rope_scaling": None}).rope_theta == 1e6


def _load(folder) -> LLMBackend:
    backend = LLMBackend(ModelConfig(backend="llm"))
    backend.load(folder, "cpu")
    return backend


def test_a_tensor_the_model_does_not_use_is_refused_by_name(test_repo, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(test_repo / "tiny-llama" / "1", folder)
    (file,) = folder.glob("*.safetensors")
    state = load_file(str(file))
    state["model.layers.0.self_attn.q_proj.bias"] = torch.ones(64)  # a Qwen2 bias in a Llama checkpoint
    save_file(state, str(file))
    with pytest.raises(ModelLoadError, match="model.layers.0.self_attn.q_proj.bias"):
        _load(folder)


def test_an_untied_checkpoint_without_lm_head_is_refused(test_repo, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(test_repo / "tiny-llama" / "1", folder)
    (file,) = folder.glob("*.safetensors")
    state = load_file(str(file))
    del state["lm_head.weight"]
    save_file(state, str(file))
    with pytest.raises(ModelLoadError, match="lm_head.weight"):
        _load(folder)


def _write_hf(folder, test_repo, config) -> torch.nn.Module:
    """A random transformers model saved as safetensors, with tiny-llama's tokenizer beside it."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # biases start at zero: make them count
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(test_repo / "tiny-llama" / "1" / name, folder / name)
    return model


def _greedy(backend: LLMBackend, prompt: list[int], max_tokens: int) -> list[int]:
    engine = LLMEngine(backend, "m")

    async def main():
        engine.start()
        try:
            handle = engine.submit(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
            tokens = []
            while (event := await asyncio.wait_for(handle.queue.get(), 60)).finish_reason is None:
                tokens += event.token_ids
            return tokens + list(event.token_ids)
        finally:
            await engine.stop()

    return asyncio.run(main())


SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, tie_word_embeddings=False)


def test_qwen2_biases_are_computed_as_transformers_does(test_repo, tmp_path):
    from transformers import Qwen2Config

    reference = _write_hf(tmp_path / "q", test_repo, Qwen2Config(**SMALL))
    prompt = [5, 17, 99, 3, 250, 11, 42, 7]
    assert _greedy(_load(tmp_path / "q"), prompt, 24) == hf_greedy(reference, prompt, 24)


def test_mistral_sliding_window_caps_the_context_where_it_agrees_with_transformers(test_repo, tmp_path):
    from transformers import MistralConfig

    reference = _write_hf(tmp_path / "w", test_repo, MistralConfig(**SMALL, sliding_window=32))
    backend = _load(tmp_path / "w")
    assert backend.max_model_len == 32
    prompt = [5, 17, 99, 3, 250, 11, 42, 7]
    assert _greedy(backend, prompt, 24) == hf_greedy(reference, prompt, 24)


def test_computed_buffers_are_tolerated_only_where_the_architecture_has_them():
    from mlserve.engine.llm.checkpoint import check_unused

    check_unused(["model.layers.0.self_attn.rotary_emb.inv_freq"], set(), "llama")
    check_unused(["h.0.attn.bias", "h.0.attn.masked_bias"], set(), "gpt2")
    with pytest.raises(ValueError, match="model.layers.0.attn.bias"):
        check_unused(["model.layers.0.attn.bias"], set(), "llama")
