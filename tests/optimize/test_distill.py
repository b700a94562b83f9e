"""The distillation pass on the test MLP: a narrower student, the same one for the same seed,
outputs near the teacher's; graphs that are not a plain MLP chain are refused as unavailable."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mlserve.optimize.base import Options, PassUnavailable
from mlserve.optimize.distill import DistillPass
from mlserve.optimize.source import open_source
from tests.optimize.models import write_data, write_onnx

FAST = Options(distill_width=0.5, distill_steps=200, distill_time_s=60)


@pytest.fixture
def source(tmp_path):
    write_onnx(tmp_path / "models", "mlp")
    work = tmp_path / "work"
    work.mkdir()
    return open_source(tmp_path / "models", "mlp", None, None, write_data(tmp_path / "val.npz"), work)


def _outputs(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _distill(source, out, options=FAST):
    out.mkdir()
    return DistillPass().run(source, options, out)


def test_student_is_narrower_close_to_the_teacher_and_the_same_for_a_seed(source, tmp_path):
    first = _distill(source, tmp_path / "a")
    again = _distill(source, tmp_path / "b")
    assert first.notes["hidden_widths"] == [32, 32] and first.notes["teacher_widths"] == [64, 64]
    assert first.notes["steps"] == 200 and not first.notes["stopped_by_time_budget"]
    x = source.data["x"]
    student = _outputs(first.folder / "model.onnx", x)
    np.testing.assert_array_equal(student, _outputs(again.folder / "model.onnx", x))
    teacher = _outputs(source.onnx_path, x)
    untrained = tmp_path / "c"
    zero = _distill(source, untrained, Options(distill_width=0.5, distill_steps=1, distill_time_s=60))
    error = np.abs(student - teacher).mean()
    assert error < np.abs(_outputs(zero.folder / "model.onnx", x) - teacher).mean()  # training helped
    other = _distill(source, tmp_path / "d", Options(distill_width=0.5, distill_steps=200, distill_seed=7))
    assert not np.array_equal(student, _outputs(other.folder / "model.onnx", x))


def test_a_graph_that_is_not_an_mlp_chain_is_unavailable(source, tmp_path):
    model = onnx.load(str(source.onnx_path))
    softmax = onnx.helper.make_node("Softmax", ["y"], ["probs"], axis=1)
    model.graph.node.append(softmax)
    model.graph.output[0].name = "probs"
    path = tmp_path / "softmax.onnx"
    onnx.save(model, str(path))
    source.onnx_path = path
    with pytest.raises(PassUnavailable, match="Softmax"):
        _distill(source, tmp_path / "out")


@pytest.mark.parametrize("body, named", [({"distill_width": 2}, "distill_width"), ({"distill_steps": 1.5}, "distill_steps"),
                                         ({"distill_seed": -1}, "distill_seed"), ({"distill_time_s": 0}, "distill_time_s")])
def test_the_route_body_bounds_every_distillation_knob(tmp_path, body, named):
    from mlserve.errors import InvalidInput
    from mlserve.optimize.request import parse_body

    with pytest.raises(InvalidInput, match=named):
        parse_body(body, "mlp", tmp_path)
    request, _ = parse_body({"distill_width": 0.25, "distill_steps": 10, "passes": ["distill"]}, "mlp", tmp_path)
    assert (request.options.distill_width, request.options.distill_steps, request.passes) == (0.25, 10, ("distill",))
