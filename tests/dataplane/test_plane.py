"""DataPlane in process, over a real loader and a real repository: a model in Triton's wording when
unknown, the models in name order, and the repository index as v2 and gRPC both answer it."""

from __future__ import annotations

import asyncio

import pytest

from mlserve.config import RegistryConfig
from mlserve.dataplane import DataPlane
from mlserve.errors import ModelNotFound
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.local import LocalStore
from tests.routing.models import write_scale_onnx


def _repo(root):
    for version in (1, 2):
        write_scale_onnx(root / "m" / str(version) / "model.onnx", float(version))
    (root / "m" / "model.toml").write_text("version_policy = { all = true }\n")
    write_scale_onnx(root / "a" / "1" / "model.onnx", 1.0)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    (root / "badtoml" / "1").mkdir(parents=True)
    (root / "badtoml" / "model.toml").write_text("max_batch_size = 'many'\n")
    return root


def _with_plane(root, check) -> None:
    async def scenario():
        loader = HotSwapLoader(LocalStore(root), RegistryConfig(models=str(root)), Metrics())
        await loader.reconcile()
        try:
            check(DataPlane(loader))
        finally:
            await loader.close()

    asyncio.run(scenario())


def test_models_are_found_by_name_and_listed_in_name_order(tmp_path):
    def check(plane: DataPlane) -> None:
        assert plane.model("m").name == "m" and plane.find("m") is plane.model("m")
        assert plane.find("nope") is None and plane.has("m") and not plane.has("nope")
        with pytest.raises(ModelNotFound, match=r"^Request for unknown model: 'nope' is not found$"):
            plane.model("nope")
        assert plane.names() == ["a", "broken", "m"] == [name for name, _ in plane.items()]
        assert plane.num_ready_versions() == 3
        assert [name for name, _ in plane.scan_errors()] == ["badtoml"]

    _with_plane(_repo(tmp_path), check)


def test_the_index_lists_versions_then_unreadable_folders_each_in_name_order(tmp_path):
    def check(plane: DataPlane) -> None:
        rows = plane.index(ready_only=False)
        assert [(r["name"], r["version"], r["state"]) for r in rows] == [
            ("a", "1", "READY"), ("broken", "1", "UNAVAILABLE"), ("m", "1", "READY"), ("m", "2", "READY"),
            ("badtoml", "", "UNAVAILABLE"),
        ]
        assert "max_batch_size" in rows[-1]["reason"]
        assert [(r["name"], r["version"]) for r in plane.index(ready_only=True)] == [("a", "1"), ("m", "1"), ("m", "2")]

    _with_plane(_repo(tmp_path), check)
