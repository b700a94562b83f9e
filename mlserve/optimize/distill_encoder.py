"""Distillation for BERT-style encoders: a student with every other layer, trained on the teacher's
embeddings.

Applies where the source is an ONNX encoder, (input_ids, attention_mask) [B, T] int64 -> hidden
[B, T, H], whose version folder also holds the Hugging Face `config.json` (a BERT model_type) and
its safetensors: the weights the student starts from. The student keeps the embeddings and layers
L-1, L-3, ... of the teacher's L (every other layer, counted from the top so the last layer, the
one the embedding space was tuned on, stays), then trains with AdamW on the teacher's outputs: the
mean squared error of the token states under the mask plus 1 - cosine of the mean-pooled sentence
embeddings. Its inputs are the validation rows with 15% of each row's real tokens (never [CLS]
or [SEP]) replaced by [MASK] at every step (the augmentation), so the exact rows the gate judges
are rarely the ones trained on. `distill_steps` steps at most, seeded (`distill_seed`): the same
data gives the same student, unless `distill_time_s` cuts the training short (the notes say so).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlserve.optimize.base import Artifact, Options, PassFailed, PassUnavailable, Source, onnx_chain, torch_threads
from mlserve.optimize.pause import CLOCK

ENCODER_TYPES = ("bert",)
INPUTS = ("input_ids", "attention_mask")
BATCH_ROWS = 16
MASK_SHARE = 0.15
"""Share of each row's real tokens replaced by [MASK] at each step (the augmentation)."""
LEARNING_RATE = 5e-5


def is_encoder_source(source: Source) -> bool:
    """A BERT-style encoder this pass can make a student of (its config.json says so)."""
    config = source.folder / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") in ENCODER_TYPES
    except (OSError, ValueError):
        return False


def kept_layers(num_layers: int) -> list[int]:
    """Every other layer, the last one included: 6 -> [1, 3, 5]."""
    return list(range(num_layers - 1, -1, -2))[::-1]


def distill_encoder(source: Source, options: Options, out: Path, name: str) -> Artifact:
    """Write the student as `out/model.onnx` with the source's tensor names."""
    import torch

    _check_tensors(source)
    teacher = _teacher(source.folder)
    layers = kept_layers(teacher.config.num_hidden_layers)
    if len(layers) == teacher.config.num_hidden_layers:
        raise PassUnavailable("the encoder has one layer: nothing to drop")
    torch.manual_seed(options.distill_seed)
    student = _student(teacher, layers)
    ids, mask = (torch.from_numpy(source.data[n].astype(np.int64)) for n in INPUTS)
    with torch_threads(1):
        steps, stopped = _train(student, teacher, ids, mask, options)
        _export(student.eval(), source, out / "model.onnx")
    return Artifact(name, out, "onnx", onnx_chain(source, name),
                    {"kind": "encoder", "teacher_layers": teacher.config.num_hidden_layers, "kept_layers": layers,
                     "steps": steps, "stopped_by_time_budget": stopped, "seed": options.distill_seed})


def _check_tensors(source: Source) -> None:
    names = tuple(spec.name for spec in source.inputs)
    if sorted(names) != sorted(INPUTS) or len(source.outputs) != 1:
        raise PassUnavailable(f"encoder distillation takes inputs {list(INPUTS)} and one output, "
                              f"not {list(names)} and {len(source.outputs)} outputs")


def _teacher(folder: Path):
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    except (OSError, ValueError) as exc:
        raise PassUnavailable(f"the encoder's weights could not be read from {folder.name}: {exc}") from None


def _student(teacher, layers: list[int]):
    """The teacher's config with len(layers) layers, its embeddings and the kept layers' weights."""
    import copy

    from transformers import AutoModel

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    student = AutoModel.from_config(config, attn_implementation="eager")
    state = teacher.state_dict()
    for i, kept in enumerate(layers):
        for key in [k for k in state if k.startswith(f"encoder.layer.{kept}.")]:
            state[key.replace(f"encoder.layer.{kept}.", f"encoder.layer.{i}.", 1)] = state.pop(key)
    state = {k: v for k, v in state.items() if not k.startswith("encoder.layer.")
             or int(k.split(".")[2]) < len(layers)}
    missing, unexpected = student.load_state_dict(state, strict=False)
    if [k for k in missing if "position_ids" not in k] or unexpected:
        raise PassFailed(f"student weights did not match the teacher's: missing {missing}, unexpected {unexpected}")
    return student


def _pooled(hidden, mask):
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


def _augment(ids, mask, generator, mask_token: int):
    """Replace MASK_SHARE of the real tokens (not the first or last of each row) with [MASK]."""
    import torch

    lengths = mask.sum(1, keepdim=True)
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    inner = (positions > 0) & (positions < lengths - 1)
    hit = (torch.rand(ids.shape, generator=generator) < MASK_SHARE) & inner
    return ids.masked_fill(hit, mask_token)


def _mask_token(config) -> int:
    """[MASK]: the config's, else 103 (BERT's uncased vocabulary, which MiniLM shares) where the vocabulary has it."""
    given = getattr(config, "mask_token_id", None)
    return int(given) if given is not None else (103 if config.vocab_size > 103 else config.vocab_size - 1)


def _train(student, teacher, ids, mask, options: Options) -> tuple[int, bool]:
    """AdamW on the teacher's token states and pooled embeddings; (steps run, cut by time)."""
    import torch

    generator = torch.Generator().manual_seed(options.distill_seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE)
    mask_token = _mask_token(teacher.config)
    deadline = CLOCK.now() + options.distill_time_s
    student.train()
    for step in range(options.distill_steps):
        if CLOCK.now() > deadline:
            return step, True
        pick = torch.randint(0, len(ids), (min(BATCH_ROWS, len(ids)),), generator=generator)
        # up to the batch's last real token: padding costs as much as words
        used = mask[pick].any(0).nonzero()
        width = int(used.max()) + 1 if len(used) else 1
        batch_mask = mask[pick, :width]
        batch_ids = _augment(ids[pick, :width], batch_mask, generator, mask_token)
        with torch.no_grad():
            target = teacher(input_ids=batch_ids, attention_mask=batch_mask).last_hidden_state
        hidden = student(input_ids=batch_ids, attention_mask=batch_mask).last_hidden_state
        keep = batch_mask.unsqueeze(-1).to(hidden.dtype)
        tokens = ((hidden - target) ** 2 * keep).sum() / (keep.sum() * hidden.shape[-1])
        cosine = torch.nn.functional.cosine_similarity(_pooled(hidden, batch_mask), _pooled(target, batch_mask))
        loss = tokens + (1.0 - cosine).mean()
        if not torch.isfinite(loss):
            raise PassFailed(f"distillation diverged at step {step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return options.distill_steps, False


def _export(student, source: Source, target: Path) -> None:
    """The student as ONNX taking the source's inputs in the source's order."""
    import torch

    order = [spec.name for spec in source.inputs]

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = student

        def forward(self, first, second):
            named = dict(zip(order, (first, second)))
            return self.model(input_ids=named["input_ids"], attention_mask=named["attention_mask"]).last_hidden_state

    sample = tuple(torch.from_numpy(source.data[n][:2].astype(np.int64)) for n in order)
    output, dynamic = source.outputs[0].name, {0: "batch", 1: "tokens"}
    torch.onnx.export(Encoder().eval(), sample, str(target), input_names=order, output_names=[output],
                      dynamic_axes={**{n: dynamic for n in order}, output: dynamic}, opset_version=17, dynamo=False)
