"""The doors every protocol goes through: `DataPlane` for reads, `ModelControl` (control.py) for admin
changes, and the words both speak: the served models and versions, their states, the repository's
entries and an upload's files."""

from mlserve.dataplane.plane import DataPlane
from mlserve.registry.repository import ModelEntry
from mlserve.registry.served import ServedModel, ServedVersion, VersionState
from mlserve.registry.serving import GenerativeServing
from mlserve.registry.upload import Upload, check_file_path

__all__ = ["DataPlane", "GenerativeServing", "ModelEntry", "ServedModel", "ServedVersion", "Upload", "VersionState",
           "check_file_path"]
