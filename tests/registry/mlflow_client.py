"""MLflow's own client, run with the MLflow venv's Python (never imported by mlserve's tests):

    python mlflow_client.py URL < models.json    -> prints the new version numbers (a JSON list)

Each model (name, flavor, folder, alias, signature) is logged: it writes an MLmodel with MLflow's own `Model` class into a copy of FOLDER (flavor `onnx` with
model.onnx, `pytorch` with data/model.pth, or any other name), with a tensor signature given as
'x:float32:-1,4;y:float32:-1,4' (input, then output), logs the folder as a run's artifacts and
registers it as a new version of NAME (created when missing). The flavors' own libraries (onnx,
torch) are not needed in the MLflow venv: the files are written by mlserve's side.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.models import Model, ModelSignature
from mlflow.types import Schema, TensorSpec


def _mlmodel(folder: Path, flavor: str, signature: list[tuple[str, str, list[int]]]) -> None:
    model = Model(artifact_path="model")
    if flavor == "onnx":
        model.add_flavor("onnx", onnx_version="1.16.0", data="model.onnx", providers=["CPUExecutionProvider"])
        model.add_flavor("python_function", loader_module="mlflow.onnx", data="model.onnx")
    elif flavor == "pytorch":
        model.add_flavor("pytorch", model_data="data", pytorch_version="2.4.0")
        model.add_flavor("python_function", loader_module="mlflow.pytorch", data="data")
    else:
        model.add_flavor(flavor)
    if signature:
        specs = [TensorSpec(np.dtype(dtype), tuple(shape), name) for name, dtype, shape in signature]
        model.signature = ModelSignature(inputs=Schema(specs[:1]), outputs=Schema(specs[1:]) if specs[1:] else None)
    model.save(str(folder / "MLmodel"))


def log(url: str, name: str, flavor: str, source: Path, alias: str | None, signature: str) -> int:
    client = MlflowClient(url)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        shutil.copytree(source, folder)
        _mlmodel(folder, flavor, _parse_signature(signature))
        mlflow.set_tracking_uri(url)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(folder), artifact_path="model")
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return int(version.version)


def _parse_signature(text: str) -> list[tuple[str, str, list[int]]]:
    """'x:float32:-1,4;y:float32:-1,4' -> [(x, float32, [-1, 4]), (y, ...)] (first input, then output)."""
    out = []
    for part in filter(None, text.split(";")):
        name, dtype, shape = part.split(":")
        out.append((name, dtype, [int(d) for d in shape.split(",")]))
    return out


def main(argv: list[str]) -> None:
    """URL, then a JSON list of {name, flavor, folder, alias, signature} on stdin: one process logs
    them all (importing mlflow costs seconds), printing the version numbers as a JSON list."""
    (url,) = argv
    done = [log(url, m["name"], m["flavor"], Path(m["folder"]), m.get("alias") or None, m.get("signature", ""))
            for m in json.load(sys.stdin)]
    print(json.dumps(done))


if __name__ == "__main__":
    main(sys.argv[1:])
