"""Baseline for benchmarks/policy.py: a PolicyService that answers every call with a fixed allow.

It measures what gRPC, protobuf and asyncio cost by themselves on this machine, so the
benchmark can report the real service's latency as a ratio to that floor.
Usage: python _noop_policy_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc

from symbi_proto.v1 import policy_pb2, policy_pb2_grpc


class Noop(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self) -> None:
        self.decision = policy_pb2.PolicyDecision(policy_id="noop", matched_rule="noop", decision_id="-")
        self.decision.allow.SetInParent()

    async def Evaluate(self, request: Any, context: Any) -> policy_pb2.PolicyDecision:
        return self.decision

    async def EvaluateBatch(self, request: Any, context: Any) -> policy_pb2.EvaluateBatchResponse:
        return policy_pb2.EvaluateBatchResponse(decisions=[self.decision] * len(request.requests))


async def main(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(Noop(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
