"""Generated code for the ``symbi.v1`` protobuf package: one ``x_pb2`` module (messages,
with ``.pyi`` stubs) and one ``x_pb2_grpc`` module (gRPC stubs and servicers) per
``proto/symbi/v1/x.proto``.

Generated code, do not edit: regenerate with ``python scripts/gen_proto.py``.
"""
