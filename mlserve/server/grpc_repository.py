"""Triton's model repository RPCs over gRPC: index, load and unload, through the same loader calls
as `/v2/repository/...` (admin scope; served on loopback or when admin routes are enabled)."""

from __future__ import annotations

from typing import Any

from mlserve.errors import InvalidInput
from mlserve.registry.loader import HotSwapLoader
from mlserve.registry.safety import check_model_name
from mlserve.registry.upload import publish
from mlserve.server.grpc_codec import parameter_value
from mlserve.server.grpc_gate import REPOSITORY_PATH
from mlserve.server.grpc_proto import grpc_service_pb2 as pb
from mlserve.server.triton_upload import upload_from_parameters


def index_rows(loader: HotSwapLoader, ready_only: bool) -> list[dict[str, Any]]:
    """Every model version and its state, and the folders that could not be read."""
    rows = []
    for name, served in sorted(loader.models.items()):
        for version, sv in sorted(served.versions.items()):
            rows.append({"name": name, "version": str(version), "state": sv.state.name, "reason": sv.reason})
        if not served.versions:
            rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": served.status_reason()})
    for name, reason in sorted(loader.scan_errors.items()):
        rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
    return [row for row in rows if row["state"] == "READY"] if ready_only else rows


def _no_parameters(call: str, parameters) -> None:
    if parameters:
        raise InvalidInput(f"{call}: parameter(s) {sorted(parameters)} are not supported")


class RepositoryCalls:
    """Mixed into the servicer, which provides `loader` and `_call`."""

    loader: HotSwapLoader

    async def RepositoryIndex(self, request, context):
        async def work(key):
            if request.repository_name:
                raise InvalidInput(f"unknown repository {request.repository_name!r}: mlserve serves one")
            await self.loader.reconcile(f"grpc {context.peer()}")
            answer = pb.RepositoryIndexResponse()
            for row in index_rows(self.loader, request.ready):
                answer.models.add(**row)
            return answer

        return await self._call(context, REPOSITORY_PATH, work)

    async def RepositoryModelLoad(self, request, context):
        async def work(key):
            if request.repository_name:
                raise InvalidInput(f"unknown repository {request.repository_name!r}: mlserve serves one")
            name, who = check_model_name(request.model_name), f"grpc {context.peer()}"
            if request.parameters:
                parameters = {k: parameter_value(v) for k, v in request.parameters.items()}
                await publish(self.loader, name, lambda toml: upload_from_parameters(name, parameters, toml, False),
                              who)
            else:
                await self.loader.load(name, who)
            return pb.RepositoryModelLoadResponse()

        return await self._call(context, REPOSITORY_PATH, work)

    async def RepositoryModelUnload(self, request, context):
        async def work(key):
            if request.repository_name:
                raise InvalidInput(f"unknown repository {request.repository_name!r}: mlserve serves one")
            # mlserve has no ensembles, so a model has no dependents to unload with it either way.
            _no_parameters("unload", {k for k in request.parameters if k != "unload_dependents"})
            await self.loader.unload(check_model_name(request.model_name), f"grpc {context.peer()}")
            return pb.RepositoryModelUnloadResponse()

        return await self._call(context, REPOSITORY_PATH, work)
