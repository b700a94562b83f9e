"""Distillation for BERT-style encoders: a student with half the layers, trained on the teacher's
hidden states.

Applies where the source is an ONNX encoder, (input_ids, attention_mask) [B, T] int64 -> hidden
[B, T, H], whose version folder also holds the Hugging Face `config.json` (a BERT model_type) and
its safetensors: the weights the student starts from. The student keeps the embeddings, the first
layer (the one that reads them) and the top layers (the ones the embedding space was tuned on): half
of the teacher's L rounded up, 6 -> layers 0, 4, 5. Student layer i learns teacher layer kept[i]
(the TinyBERT / MiniLM recipe, which converges far faster than the last states alone): AdamW on the
mean squared error of each layer's token states under the mask plus 1 - cosine of the mean-pooled
sentence embeddings. The word embeddings stay frozen: they are most of the parameters, and the ones
a few thousand sentences would overfit. The teacher's states are computed once per row, the first
time the row is drawn (the teacher costs about twice a student step), and batches hold rows of
similar length (padding costs as much as words). The learning rate warms up over the first 5%, then
decays to a tenth, along whichever budget is nearer its end.

A tenth of the validation rows (at most 200) is held out of training: the student is scored on them
(mean cosine of pooled embeddings to the teacher's) before training and every EVAL_EVERY steps, and
the best one is exported, so training never leaves it worse than it started. `distill_steps` steps
at most, seeded (`distill_seed`): the same data gives the same student while the step count is the
nearer budget; `distill_time_s` cuts the training short or, when nearer, paces the learning rate
(the notes say whether it cut).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlserve.optimize.base import Artifact, Options, PassFailed, PassUnavailable, Source, onnx_chain, torch_threads
from mlserve.optimize.pause import CLOCK

ENCODER_TYPES = ("bert",)
INPUTS = ("input_ids", "attention_mask")
BATCH_ROWS = 16
BUCKET_BATCHES = 8
"""Rows are sorted by length within groups of this many batches, then cut into batches."""
LEARNING_RATE = 5e-4
"""The peak, reached after the warm-up."""
WARMUP_SHARE = 0.05
FINAL_RATE_SHARE = 0.1
EVAL_EVERY = 25
"""Steps between two scorings of the student on the held-out rows."""
HELD_SHARE = 0.1
MAX_HELD_ROWS = 200


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
    """Half the layers rounded up, the first and the top ones: 6 -> [0, 4, 5]; a single one is the last."""
    num_kept = (num_layers + 1) // 2
    if num_kept == 1:
        return [num_layers - 1]
    return [0, *range(num_layers - num_kept + 1, num_layers)]


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
        trained = _train(student, TeacherTargets(teacher, layers, ids, mask), options)
        _export(student.eval(), source, out / "model.onnx")
    return Artifact(name, out, "onnx", onnx_chain(source, name),
                    {"kind": "encoder", "teacher_layers": teacher.config.num_hidden_layers, "kept_layers": layers,
                     "steps": trained.steps, "stopped_by_time_budget": trained.stopped, "best_step": trained.best_step,
                     "held_out_rows": trained.num_held, "held_out_cosine": trained.best_cosine,
                     "seed": options.distill_seed})


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


MAX_CACHED_BYTES = 512 * 2**20
"""The teacher's states kept in memory at most; rows past it are computed again each time drawn."""


class TeacherTargets:
    """The teacher's hidden states at the kept layers for each row, computed once, the first time a
    row is asked for (the teacher costs about twice a student step, and its answers never change),
    up to MAX_CACHED_BYTES of them."""

    def __init__(self, teacher, layers: list[int], ids, mask) -> None:
        import torch

        self.teacher, self.layers, self.ids, self.mask = teacher, layers, ids, mask
        positions = torch.arange(1, mask.shape[1] + 1)
        self.lengths = (mask * positions).amax(1).clamp_min(1)  # up to the last real token, either padding side
        self.rows: dict = {}
        """row index -> its states [len(layers), tokens, H], real tokens only (padding is added per batch)."""
        self.num_bytes = 0

    def batch(self, pick):
        """(ids, mask) [B, T] and the teacher's states [len(layers), B, T, H], T the batch's longest row."""
        import torch

        width = int(self.lengths[pick].max())
        fresh = self._compute([int(r) for r in pick if int(r) not in self.rows])
        states = torch.zeros(len(self.layers), len(pick), width, self.teacher.config.hidden_size)
        for i, r in enumerate(pick.tolist()):
            row = self.rows[r] if r in self.rows else fresh[r]
            states[:, i, :row.shape[1]] = row
        return self.ids[pick, :width], self.mask[pick, :width], states

    def _compute(self, rows: list[int]) -> dict:
        """The states of `rows`, kept for later while the cache has room; returns them all."""
        import torch

        computed = {}
        for start in range(0, len(rows), BATCH_ROWS):
            part = torch.tensor(rows[start:start + BATCH_ROWS])
            width = int(self.lengths[part].max())
            with torch.no_grad():
                hidden = self.teacher(input_ids=self.ids[part, :width], attention_mask=self.mask[part, :width],
                                      output_hidden_states=True).hidden_states
            chosen = torch.stack([hidden[k + 1] for k in self.layers])  # [layers, B, T, H]
            for i, r in enumerate(part.tolist()):
                row = computed[r] = chosen[:, i, :int(self.lengths[r])].clone()
                size = row.numel() * row.element_size()
                if self.num_bytes + size <= MAX_CACHED_BYTES:
                    self.rows[r] = row
                    self.num_bytes += size
        return computed


def _loss(student, ids, mask, states):
    """Mean squared error of each student layer to its teacher layer under the mask, plus 1 - cosine of
    the mean-pooled last states (the sentence embeddings)."""
    import torch

    hidden = student(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1:]
    keep = mask.unsqueeze(-1).to(states.dtype)
    count = keep.sum() * states.shape[-1]
    layers = sum(((h - t) ** 2 * keep).sum() / count for h, t in zip(hidden, states)) / len(hidden)
    cosine = torch.nn.functional.cosine_similarity(_pooled(hidden[-1], mask), _pooled(states[-1], mask))
    return layers + (1.0 - cosine).mean()


def _score(student, targets: TeacherTargets, held) -> float:
    """Mean cosine of the student's pooled embeddings to the teacher's on the held-out rows."""
    import torch

    cosines = []
    student.eval()
    with torch.no_grad():
        for part in held.split(BATCH_ROWS * 4):
            ids, mask, states = targets.batch(part)
            hidden = student(input_ids=ids, attention_mask=mask).last_hidden_state
            cosines.append(torch.nn.functional.cosine_similarity(_pooled(hidden, mask), _pooled(states[-1], mask)))
    student.train()
    return float(torch.cat(cosines).mean())


def _learning_rate(step: int, options: Options, began: float) -> float:
    """Linear warm-up over WARMUP_SHARE, then linear decay to FINAL_RATE_SHARE of the peak, along
    whichever budget (steps or seconds) is nearer its end."""
    progress = min(1.0, max(step / options.distill_steps, (CLOCK.now() - began) / options.distill_time_s))
    if progress < WARMUP_SHARE:
        return LEARNING_RATE * max(progress / WARMUP_SHARE, 0.01)
    return LEARNING_RATE * (1.0 - (1.0 - FINAL_RATE_SHARE) * (progress - WARMUP_SHARE) / (1.0 - WARMUP_SHARE))


def _batches(rows, lengths, generator) -> list:
    """One pass over the rows in batches of BATCH_ROWS of similar length: shuffled, sorted by length within
    groups of BUCKET_BATCHES batches, cut, and the batches shuffled."""
    import torch

    rows = rows[torch.randperm(len(rows), generator=generator)]
    batches = []
    for group in rows.split(BATCH_ROWS * BUCKET_BATCHES):
        batches += list(group[torch.argsort(lengths[group], stable=True)].split(BATCH_ROWS))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


@dataclass(frozen=True, slots=True)
class Trained:
    """What training did: steps run, whether time cut it, and the exported student's step and score."""

    steps: int
    stopped: bool
    best_step: int
    best_cosine: float | None
    """None when no row was held out (fewer than 10)."""
    num_held: int


class BestStudent:
    """The best-scoring weights so far on the held-out rows; with none held out, the last weights."""

    def __init__(self, student, targets: TeacherTargets, held) -> None:
        self.student, self.targets, self.held = student, targets, held
        self.step, self.cosine, self.state = 0, None, None
        self.offer(0)

    def offer(self, step: int) -> None:
        """Score the student's weights at `step`; keep them if they beat the best so far."""
        if not len(self.held):
            self.step = step
            return
        cosine = _score(self.student, self.targets, self.held)
        if self.cosine is None or cosine > self.cosine:
            self.step, self.cosine = step, cosine
            self.state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}

    def restore(self, last_step: int) -> None:
        """Offer the last weights (unless just scored), then load the best into the student."""
        if last_step % EVAL_EVERY:
            self.offer(last_step)
        if self.state is not None:
            self.student.load_state_dict(self.state)


def _train(student, targets: TeacherTargets, options: Options) -> Trained:
    """AdamW on the teacher's kept layers and pooled embeddings; the best student on the held-out rows stays."""
    import torch

    generator = torch.Generator().manual_seed(options.distill_seed)
    order = torch.randperm(len(targets.ids), generator=generator)
    num_held = min(MAX_HELD_ROWS, int(len(order) * HELD_SHARE))
    held, train = order[:num_held], order[num_held:]
    student.embeddings.word_embeddings.weight.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=LEARNING_RATE)
    began = CLOCK.now()
    best = BestStudent(student, targets, held)
    student.train()
    step, batches = 0, []
    while step < options.distill_steps and CLOCK.now() - began <= options.distill_time_s:
        batches = batches or _batches(train, targets.lengths, generator)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, options, began)
        loss = _loss(student, *targets.batch(batches.pop()))
        if not torch.isfinite(loss):
            raise PassFailed(f"distillation diverged at step {step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % EVAL_EVERY == 0:
            best.offer(step)
    best.restore(step)
    return Trained(step, step < options.distill_steps, best.step, best.cosine, num_held)


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
