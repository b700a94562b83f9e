"""Name, key and folder checks that keep model loading inside the repository."""

from __future__ import annotations

import pytest

from mlserve.errors import InvalidInput, ModelLoadError
from mlserve.registry.safety import check_object_key, check_version_folder
from mlserve.spec.names import check_model_name, check_version_name


@pytest.mark.parametrize("name", ["..", "../etc", "a/../b", "/abs", "A", "", "a..b", "a/b", ".hidden", "a\\b"])
def test_bad_model_names(name):
    with pytest.raises(InvalidInput):
        check_model_name(name)


def test_good_model_names():
    assert check_model_name("mlp_v2.onnx-1") == "mlp_v2.onnx-1"


@pytest.mark.parametrize("version", ["0", "-1", "01", "1.0", "..", "１", "", "1/2"])
def test_bad_versions(version):
    with pytest.raises(InvalidInput):
        check_version_name(version)


@pytest.mark.parametrize("key", ["models/../x", "/etc/passwd", "models/mlp//1", "models/.hidden/1", "models/a\\b",
                                 "other/mlp/1/model.onnx", "models/", "models/mlp/1/\0x"])
def test_bad_object_keys(key):
    with pytest.raises(ModelLoadError):
        check_object_key(key, "models/")


def test_good_object_key():
    assert check_object_key("models/mlp/1/model.onnx", "models/") == "mlp/1/model.onnx"


def test_version_folder_symlink_and_size(tmp_path):
    folder = tmp_path / "repo" / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"x" * 100)
    assert check_version_folder(folder, 1000) == 100
    with pytest.raises(ModelLoadError, match="over the limit of 50 bytes"):
        check_version_folder(folder, 50)
    (tmp_path / "secret").write_text("s")
    (folder / "weights.bin").symlink_to(tmp_path / "secret")
    with pytest.raises(ModelLoadError, match="outside the model repository"):
        check_version_folder(folder, 1000)
