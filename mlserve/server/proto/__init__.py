"""Generated gRPC stubs for KServe v2 / Triton's GRPCInferenceService (`make grpc-stubs` writes them
from the .proto files here, which come from Triton's common repository under its BSD-3-Clause license).
Do not edit the *_pb2*.py files by hand."""
