"""What the routes are given: the API's connections and clients, built once by the service.

Routes reach the services behind the API only through this object (``Depends(api)``):
the typed NATS clients of ``symbi_common`` (each request carrying ``traceparent``),
the policy client (gRPC), the key store and the rate limiter (Redis), and the guard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from nats.aio.client import Client

from symbi_api.guard import Guard
from symbi_api.keys import ApiKey, KeyStore
from symbi_common import natsio
from symbi_common.catalog import SERVICE_NAMES
from symbi_common.context_client import ContextClient
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.policy_client import PolicyClient
from symbi_common.ratelimit import RateLimiter
from symbi_common.scheduler_client import SchedulerClient
from symbi_common.settings import Settings
from symbi_common.tools_client import ToolsClient

Resp = TypeVar("Resp", bound=Message)


@dataclass
class Api:
    settings: Settings
    nc: Client
    keys: KeyStore
    limiter: RateLimiter
    policy: PolicyClient
    guard: Guard
    ready: Callable[[], bool] = lambda: True
    expected_services: tuple[str, ...] = SERVICE_NAMES

    @property
    def timeout_s(self) -> float:
        return self.settings.api.call_timeout_s

    def lifecycle(self, caller: ApiKey) -> LifecycleClient:
        return LifecycleClient(self.nc, timeout_s=self.timeout_s, actor=caller.name, roles=caller.roles)

    def scheduler(self, caller: ApiKey) -> SchedulerClient:
        return SchedulerClient(self.nc, timeout_s=self.timeout_s, actor=caller.name)

    def context(self) -> ContextClient:
        return ContextClient(self.nc, timeout_s=self.timeout_s)

    def tools(self, caller: ApiKey, agent_id: str = "") -> ToolsClient:
        return ToolsClient(self.nc, timeout_s=self.timeout_s, agent_id=agent_id, actor=caller.name, roles=caller.roles)

    async def ask(self, subject: str, message: Message, response: type[Resp]) -> Resp:
        """One request-reply to a service, with the API's timeout and typed errors."""
        return await natsio.request(self.nc, subject, message, response, timeout=self.timeout_s)


def api(request: Request) -> Api:
    """FastAPI dependency: the service's ``Api``."""
    found: Api = request.app.state.api
    return found


def to_json(message: Message) -> dict[str, Any]:
    """A protobuf message as JSON (field names as in the .proto, enums by name, defaults included)."""
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
