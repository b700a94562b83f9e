"""The capped .npz reader: an archive whose arrays would inflate past the cap, or whose .npy header
claims more than its member holds, is refused before any array data is read, by each of its
readers (the drift reference, the [warmup] file, optimize's validation data)."""

from __future__ import annotations

import resource
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mlserve.errors import InvalidInput, ModelLoadError
from mlserve.monitor.hub import load_reference
from mlserve.monitor.npz import MAX_NPZ_BYTES, read_npz
from mlserve.optimize.source import open_source
from mlserve.registry.warmup import warm_up
from mlserve.spec import ModelInfo, TensorSpec, parse_model_config
from tests.registry.helpers import write_version

BOMB_ROWS = (MAX_NPZ_BYTES // 16) + 1024  # float32 x 4 columns: just past the cap


def write_bomb(path: Path, name: str = "x") -> Path:
    """A deflated .npz of zeros that inflates past MAX_NPZ_BYTES from well under a megabyte."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (BOMB_ROWS, 4)}
    block = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open(f"{name}.npy", "w", force_zip64=True) as out:
        np.lib.format.write_array_header_1_0(out, header)
        remaining = BOMB_ROWS * 16
        while remaining:
            out.write(block[:min(len(block), remaining)])
            remaining -= min(len(block), remaining)
    assert path.stat().st_size < 1 << 20
    return path


def write_liar(path: Path) -> Path:
    """A stored .npz whose one member holds 64 bytes of data but whose header declares 4 GiB."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive, archive.open("x.npy", "w") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": (2**30,)})
        out.write(bytes(64))
    return path


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_arrays_round_trip(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "f": np.asfortranarray(np.ones((2, 3))),
              "s": np.array(["ab", "c"]), "e": np.zeros((0, 5))}
    np.savez_compressed(tmp_path / "ok.npz", **arrays)
    got = read_npz(tmp_path / "ok.npz")
    assert set(got) == set(arrays)
    for name, array in arrays.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array)
    assert set(read_npz(tmp_path / "ok.npz", names={"a"})) == {"a"}


def test_a_bomb_is_refused_before_it_inflates(tmp_path):
    bomb = write_bomb(tmp_path / "reference.npz")
    before = _max_rss_mib()
    with pytest.raises(ValueError, match="over the limit"):
        read_npz(bomb)
    with pytest.raises(ValueError, match="over the limit"):
        load_reference(bomb)
    assert _max_rss_mib() - before < 64


def test_a_header_that_claims_more_than_its_member_holds_is_refused(tmp_path):
    with pytest.raises(ValueError, match="more than the member holds"):
        read_npz(write_liar(tmp_path / "liar.npz"))


def test_pickled_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickles"):
        read_npz(tmp_path / "objects.npz")


class EchoBackend:
    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    def infer(self, inputs):
        return {"y": inputs["x"]}


def test_the_warmup_file_is_read_capped(tmp_path):
    write_bomb(tmp_path / "warmup.npz")
    info = ModelInfo("x", (TensorSpec("x", "FP32", (-1, 4)),), (), max_batch_size=4)
    config = parse_model_config({"max_batch_size": 4, "warmup": {"file": "warmup.npz"}})
    with pytest.raises(ModelLoadError, match=r"\[warmup\] file 'warmup.npz'.*over the limit"):
        warm_up(EchoBackend(info), config, tmp_path)


def test_optimize_data_is_read_capped(tmp_path):
    write_version(tmp_path / "models", "m", 1)
    write_bomb(tmp_path / "models" / "m" / "1" / "reference.npz")
    (tmp_path / "work").mkdir()
    with pytest.raises(InvalidInput, match="over the limit"):
        open_source(tmp_path / "models", "m", None, None, None, tmp_path / "work")
