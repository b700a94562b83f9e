"""The distillation pass on a BERT-style encoder (a tiny random BERT with 4 layers, exported to ONNX as
the examples export MiniLM): a student with half the layers (the first and the top ones), initialized
from the teacher, closer to it after training, the same one for the same seed, with the source's
tensor names."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from mlserve.optimize.base import Options, PassUnavailable, torch_threads
from mlserve.optimize.distill import DistillPass
from mlserve.optimize.distill_encoder import kept_layers
from mlserve.optimize.source import open_source

transformers = pytest.importorskip("transformers")
FAST = Options(distill_steps=30, distill_time_s=600)


def _tiny_bert(folder):
    import torch

    from mlserve.examples_embedding import export_encoder_onnx

    torch.manual_seed(0)
    # weights 5x BERT's initial scale: at 0.02 every random layer is close to the identity, so a student of
    # any two starts at cosine 0.9997 to the teacher and has nothing left to learn; here it starts near 0.82
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, initializer_range=0.1)
    transformers.BertModel(config).save_pretrained(folder)
    with torch_threads(1):  # a tiny model: a second thread only waits (see torch_threads)
        export_encoder_onnx(folder)


def _rows(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 12, count)
    ids = np.zeros((count, 12), np.int64)
    mask = np.zeros((count, 12), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = [1, *rng.integers(5, 100, n - 2), 2]  # [CLS]-like, words, [SEP]-like
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("encoder")
    folder = tmp / "models" / "enc" / "1"
    folder.mkdir(parents=True)
    _tiny_bert(folder)
    (tmp / "models" / "enc" / "model.toml").write_text('backend = "onnx"\nmax_batch_size = 16\n')
    np.savez(tmp / "train.npz", **_rows(64, 0))
    work = tmp / "work"
    work.mkdir()
    return open_source(tmp / "models", "enc", 1, None, tmp / "train.npz", work)


def _pooled(path, rows):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hidden = session.run(None, rows)[0]
    weights = rows["attention_mask"][..., None]
    return (hidden * weights).sum(1) / weights.sum(1)


def _cosine(a, b):
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _distill(source, out, options=FAST):
    out.mkdir()
    return DistillPass().run(source, options, out)


def test_half_the_layers_are_kept_the_first_and_the_top_ones():
    assert kept_layers(6) == [0, 4, 5] and kept_layers(4) == [0, 3] and kept_layers(3) == [0, 2]
    assert kept_layers(5) == [0, 3, 4] and kept_layers(2) == [1]


def test_student_has_half_the_layers_learns_from_the_teacher_and_is_the_same_for_a_seed(source, tmp_path):
    trained = _distill(source, tmp_path / "a")
    assert trained.notes["kept_layers"] == [0, 3] and trained.notes["teacher_layers"] == 4
    assert trained.notes["steps"] == 30 and not trained.notes["stopped_by_time_budget"]
    assert trained.notes["held_out_rows"] == 6 and trained.notes["best_step"] in (0, 25, 30)  # a tenth of 64 rows
    held = _rows(32, 1)  # rows the student never saw
    teacher = _pooled(source.onnx_path, held)
    student = _pooled(trained.folder / "model.onnx", held)
    untrained = _distill(source, tmp_path / "b", Options(distill_steps=1, distill_time_s=600))
    assert _cosine(student, teacher) > _cosine(_pooled(untrained.folder / "model.onnx", held), teacher)
    again = _distill(source, tmp_path / "c")
    np.testing.assert_array_equal(student, _pooled(again.folder / "model.onnx", held))
    session = ort.InferenceSession(str(trained.folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["hidden"]


def test_the_time_budget_stops_training_and_says_so_and_torch_threads_are_put_back(source, tmp_path):
    import torch

    torch.set_num_threads(2)
    cut = _distill(source, tmp_path / "a", Options(distill_steps=100_000, distill_time_s=0.5))
    assert cut.notes["stopped_by_time_budget"] and cut.notes["steps"] < 100_000
    assert torch.get_num_threads() == 2  # the pass trains with one thread and puts the count back


def test_an_encoder_with_other_inputs_is_unavailable(source, tmp_path):
    from dataclasses import replace

    with pytest.raises(PassUnavailable, match="input_ids"):
        _distill(replace(source, outputs=source.outputs * 2), tmp_path / "a")


def test_teacher_states_past_the_cache_budget_are_computed_again_and_equal(source, monkeypatch):
    """The teacher's states are kept up to MAX_CACHED_BYTES; rows past it are computed each time they
    are drawn, with the same values, and the cache never grows past the budget."""
    import torch

    from mlserve.optimize import distill_encoder

    teacher = distill_encoder._teacher(source.folder)
    ids, mask = (torch.from_numpy(source.data[n].astype(np.int64)) for n in distill_encoder.INPUTS)
    layers = kept_layers(teacher.config.num_hidden_layers)
    unbounded = distill_encoder.TeacherTargets(teacher, layers, ids, mask)
    pick = torch.arange(8)
    expected = unbounded.batch(pick)[2]
    row_bytes = [unbounded.rows[r].numel() * unbounded.rows[r].element_size() for r in range(3)]
    monkeypatch.setattr(distill_encoder, "MAX_CACHED_BYTES", sum(row_bytes))
    bounded = distill_encoder.TeacherTargets(teacher, layers, ids, mask)
    for _ in range(2):  # the second time, rows 0-2 come from the cache and the rest are computed again
        torch.testing.assert_close(bounded.batch(pick)[2], expected)
        assert sorted(bounded.rows) == [0, 1, 2] and bounded.num_bytes == sum(row_bytes)
