"""Scheduler service bootstrap: NATS, Redis, health and metrics.

State lives in Redis; the scheduler logic registers its handlers on the context here.
"""

from __future__ import annotations

from symbi_common import redisio
from symbi_common.service import ServiceContext, ServiceSpec


async def setup(ctx: ServiceContext) -> None:
    await redisio.attach(ctx)


SPEC = ServiceSpec(name="scheduler", summary="priority queues, placement and preemption", setup=setup)
