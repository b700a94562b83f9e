"""Accuracy on a real task: an MLP trained in the test on scikit-learn's digits (8x8 images, 10
classes; 1,000 rows to train, the other 797 held out as the validation set with labels), then INT8
dynamic quantization and distillation judged by the gate. Top-1 agreement with the FP32 model and
the accuracy drop are measured and printed; the assertions are only as tight as 797 rows support."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlserve.optimize.base import Options
from mlserve.optimize.evaluate import Budget
from mlserve.optimize.gate import GateSettings
from mlserve.optimize.pipeline import OptimizeRequest, run

NUM_TRAIN = 1000


def _trained_digits_mlp(root: Path) -> Path:
    """Writes models/digits/1/model.onnx and val.npz (held-out x and labels); returns val.npz."""
    torch = pytest.importorskip("torch")
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, held = order[:NUM_TRAIN], order[NUM_TRAIN:]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for _ in range(150):  # full-batch epochs: about 1 s on one core
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        optimizer.step()
    folder = root / "digits" / "1"
    folder.mkdir(parents=True)
    torch.onnx.export(net.eval(), (torch.zeros(2, 64),), str(folder / "model.onnx"), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    np.savez(folder / "val.npz", x=x[held], labels=y[held])
    return folder / "val.npz"


def test_int8_and_distillation_on_a_trained_digits_mlp(tmp_path):
    root = tmp_path / "models"
    data = _trained_digits_mlp(root)
    request = OptimizeRequest("digits", root, 1, None, data, ("int8_dynamic", "distill"),
                              Options(distill_width=0.25, distill_steps=600, distill_time_s=60),
                              GateSettings(max_top1_drop=0.02, max_metric_drop=0.01, min_gain=1.0),
                              Budget(latency_s=0.1), publish=False)
    report = run(request)
    rows = {r.name: r for r in report.rows}
    source = rows["source"].figures
    for name in ("int8_dynamic", "distill"):
        figures = rows[name].figures
        print(f"{name}: top-1 agreement {figures.top1_agreement:.4f}, accuracy {figures.metric:.4f} "
              f"(FP32 {source.metric:.4f}, drop {source.metric - figures.metric:+.4f}), "
              f"{figures.num_bytes / source.num_bytes:.2f}x the size, "
              f"{figures.throughput_rps / source.throughput_rps:.2f}x the rows/s, {rows[name].status} {rows[name].reason}")
    assert source.metric > 0.9  # the model really learned the task, so agreement means something
    int8 = rows["int8_dynamic"].figures
    # Measured here: 0.9925 top-1 agreement (6 of 797 rows differ) and no accuracy drop; the issue's
    # target is 0.99. One row is 0.0013, so the bounds leave room for a few rows of another machine's
    # arithmetic rather than asserting the target to the row.
    assert int8.top1_agreement >= 0.98 and source.metric - int8.metric <= 0.01
    distill = rows["distill"]
    assert distill.figures is not None and distill.figures.num_bytes < source.num_bytes / 3
    assert source.metric - distill.figures.metric <= 0.03  # measured -0.0013 (600 steps) and +0.0013 (1500)
