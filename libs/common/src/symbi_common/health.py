"""Health of one service replica: components, resource use, recent errors.

Components register a check (sync or async) returning a status and a detail. The
overall status is the worst component's. Recent errors come from two places:
background task failures and ERROR log records (through ``RecentErrorsHandler``),
kept in a small ring buffer. ``snapshot`` renders all of it as ``symbi.v1.HealthStatus``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import resource
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp

from symbi_proto.v1 import common_pb2, health_pb2

Status: TypeAlias = "health_pb2.ServingStatus.ValueType"  # a stub-only type: quoted
SERVING: Status = health_pb2.SERVING_STATUS_SERVING
DEGRADED: Status = health_pb2.SERVING_STATUS_DEGRADED
NOT_SERVING: Status = health_pb2.SERVING_STATUS_NOT_SERVING

CheckResult = tuple[Status, str]
Check = Callable[[], CheckResult | Awaitable[CheckResult]]

_SEVERITY = {SERVING: 0, DEGRADED: 1, NOT_SERVING: 2}
CHECK_TIMEOUT_S = 1.0


@dataclass(slots=True)
class _CpuSample:
    wall: float
    cpu: float


class HealthRegistry:
    def __init__(self, service: str, instance_id: str, version: str, max_errors: int = 20) -> None:
        self.service = service
        self.instance_id = instance_id
        self.version = version
        self.started = time.monotonic()
        self.endpoints: dict[str, str] = {}
        self._checks: dict[str, Check] = {}
        self._errors: deque[health_pb2.RecentError] = deque(maxlen=max_errors)
        self._cpu = _CpuSample(time.monotonic(), _cpu_seconds())

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def record_error(self, component: str, message: str) -> None:
        error = health_pb2.RecentError(component=component, message=message[:500])
        error.time.GetCurrentTime()
        self._errors.append(error)

    async def snapshot(self) -> health_pb2.HealthStatus:
        components = [await self._run(name, check) for name, check in self._checks.items()]
        overall = max((c.status for c in components), key=_SEVERITY.__getitem__, default=SERVING)
        now = Timestamp()
        now.GetCurrentTime()
        return health_pb2.HealthStatus(
            service=self.service,
            instance_id=self.instance_id,
            status=overall,
            components=components,
            resources=self._usage(),
            recent_errors=list(self._errors),
            time=now,
            version=self.version,
            endpoints=self.endpoints,
            uptime_seconds=time.monotonic() - self.started,
        )

    async def _run(self, name: str, check: Check) -> health_pb2.ComponentHealth:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, CHECK_TIMEOUT_S)
            status, detail = result
        except Exception as exc:  # a failing check is itself a health fact
            status, detail = NOT_SERVING, f"check failed: {type(exc).__name__}: {exc}"
        return health_pb2.ComponentHealth(name=name, status=status, detail=detail)

    def _usage(self) -> common_pb2.ResourceUsage:
        wall, cpu = time.monotonic(), _cpu_seconds()
        elapsed = wall - self._cpu.wall
        percent = 100.0 * (cpu - self._cpu.cpu) / elapsed if elapsed > 0 else 0.0
        self._cpu = _CpuSample(wall, cpu)
        return common_pb2.ResourceUsage(
            cpu_percent=percent,
            memory_rss_bytes=_rss_bytes(),
            threads=_count("/proc/self/task"),
            open_fds=_count("/proc/self/fd"),
        )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _count(path: str) -> int:
    try:
        return len(os.listdir(path))
    except OSError:
        return 0


class RecentErrorsHandler(logging.Handler):
    """Feeds ERROR records into a registry's recent errors."""

    def __init__(self, registry: HealthRegistry) -> None:
        super().__init__(level=logging.ERROR)
        self.registry = registry

    def emit(self, record: logging.LogRecord) -> None:
        self.registry.record_error(record.name, record.getMessage())


def is_ready(status: health_pb2.HealthStatus) -> bool:
    return status.status in (SERVING, DEGRADED)


def status_name(status: Status) -> str:
    return health_pb2.ServingStatus.Name(status).removeprefix("SERVING_STATUS_").lower()
