"""Triton's model repository RPCs over gRPC: index, load and unload, through the same loader calls
as `/v2/repository/...` (admin scope; served on loopback or when admin routes are enabled)."""

from __future__ import annotations

from mlserve.dataplane import DataPlane
from mlserve.dataplane.control import ModelControl
from mlserve.errors import InvalidInput
from mlserve.spec.names import check_model_name
from mlserve.server.grpc.codec import parameters_dict
from mlserve.server.proto import grpc_service_pb2 as pb
from mlserve.server.triton_upload import check_unload_parameters, load_model


class RepositoryCalls:
    """Mixed into the servicer, which provides `plane`, `control` and `_call`. Loads and unloads
    pass through ModelControl, which shares them with the other replicas."""

    plane: DataPlane
    control: ModelControl

    async def RepositoryIndex(self, request, context):
        async def work(key):
            if request.repository_name:
                raise InvalidInput(f"unknown repository {request.repository_name!r}: mlserve serves one")
            await self.control.reconcile(f"grpc {context.peer()}")
            answer = pb.RepositoryIndexResponse()
            for row in self.plane.index(request.ready):
                answer.models.add(**row)
            return answer

        return await self._call(context, "RepositoryIndex", work)

    async def RepositoryModelLoad(self, request, context):
        async def work(key):
            if request.repository_name:
                raise InvalidInput(f"unknown repository {request.repository_name!r}: mlserve serves one")
            name = check_model_name(request.model_name)
            parameters, who = parameters_dict(request.parameters), f"grpc {context.peer()}"
            await load_model(self.control, name, parameters, False, who)
            return pb.RepositoryModelLoadResponse()

        return await self._call(context, "RepositoryModelLoad", work)

    async def RepositoryModelUnload(self, request, context):
        async def work(key):
            if request.repository_name:
                raise InvalidInput(f"unknown repository {request.repository_name!r}: mlserve serves one")
            check_unload_parameters(parameters_dict(request.parameters))
            await self.control.unload(check_model_name(request.model_name), f"grpc {context.peer()}")
            return pb.RepositoryModelUnloadResponse()

        return await self._call(context, "RepositoryModelUnload", work)
