"""The doors every protocol goes through: `DataPlane` for inference and reads, `ModelControl`
(control.py) for admin changes, and the words both speak: the served models and versions, their
states, the repository's entries, an upload's files, a generation in flight, the server's token limits
and a version's labels file. (The plain request and answer types live in `mlserve.spec`.)"""

from mlserve.dataplane.counting import RequestCounter
from mlserve.dataplane.plane import DataPlane
from mlserve.registry.repository import ModelEntry
from mlserve.registry.served import ServedModel, ServedVersion, VersionState
from mlserve.registry.serving import GenerativeServing
from mlserve.registry.upload import Upload, check_file_path
from mlserve.routing.classification import labels_path
from mlserve.routing.generation.run import GenerationRun, token_limits

__all__ = ["DataPlane", "GenerationRun", "GenerativeServing", "ModelEntry", "RequestCounter", "ServedModel", "ServedVersion", "Upload",
           "VersionState", "check_file_path", "labels_path", "token_limits"]
