"""How a worker runs a task: the ``Runner`` protocol, and the simulated runner.

A runner starts a task and hands back an ``Execution``: something to wait on for
the task's exit and to stop, where ``stop`` returns ``True`` only once the task's
processes are confirmed gone. The Docker/gVisor runner implements the same
protocol; the worker (``worker.py``) does not know which one it drives.

``SimulatedRunner`` executes nothing at all: a task "runs" for a while and "exits",
as its labels say. It exists so the scheduler, lifecycle and worker contract can be
exercised end to end where running code is not wanted. It reports the runtime
``simulated`` in every status, so no one mistakes it for a sandbox. Labels::

    symbi.simulate/seconds      run time (default: [sandbox].simulated_seconds)
    symbi.simulate/exit_code    exit code (default 0)
    symbi.simulate/memory_mb    peak memory; above the task's memory limit it is OOM-killed
    symbi.simulate/ignore_stop  "true": stop requests are never confirmed (a stuck sandbox)
    symbi.simulate/output_bytes output written; above max_output_bytes it is killed

A task whose run time exceeds its ``execution_timeout`` is killed at the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from symbi_proto.v1 import common_pb2, sandbox_pb2, task_pb2

LABEL = "symbi.simulate/"
TIERS = (sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER, sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR)


@dataclass(frozen=True, slots=True)
class Exit:
    """How a task ended."""

    reason: task_pb2.TaskExitReason.ValueType
    exit_code: int | None
    detail: str
    usage: common_pb2.TaskResourceUsage = field(default_factory=common_pb2.TaskResourceUsage)
    output_bytes: int = 0
    output_truncated: bool = False


class Execution(Protocol):
    sandbox_id: str
    runtime: str

    async def wait(self) -> Exit:
        """Until the task ends, for whatever reason."""
        ...

    async def stop(self, grace_s: float) -> bool:
        """Ask the task to stop (SIGTERM, then SIGKILL after ``grace_s``); True once its processes are gone."""
        ...

    def usage(self) -> common_pb2.TaskResourceUsage:
        """Resource use so far."""
        ...


OutputSink = Callable[[int, int, bytes, bool], None]
"""Receives output as it comes: (stream 1=stdout 2=stderr, offset in that stream, data, end of stream)."""


class Runner(Protocol):
    name: str

    def tiers(self) -> list[sandbox_pb2.TierAvailability]: ...

    async def refresh(self) -> None:
        """Look again at what this node can run (tiers come and go with the container engine)."""
        ...

    async def remove_leftovers(self) -> int:
        """Remove sandboxes a previous instance on this node left behind; returns how many."""
        ...

    def warm_pools(self) -> list[task_pb2.WarmPool]:
        """Containers ready per tier (empty when the runner keeps none)."""
        ...

    async def start(self, task: task_pb2.Task, on_output: OutputSink | None = None) -> Execution:
        """Create the sandbox and start the task; raise ``SymbiError`` if it cannot start."""
        ...

    async def close(self) -> None: ...


class SimulatedExecution:
    runtime = "simulated"

    def __init__(self, task: task_pb2.Task, default_seconds: float) -> None:
        labels = task.labels
        self.sandbox_id = f"simulated-{task.task_id}"
        self.seconds = float(labels.get(LABEL + "seconds", default_seconds))
        self.exit_code = int(labels.get(LABEL + "exit_code", "0"))
        self.memory_mb = int(labels.get(LABEL + "memory_mb", "0"))
        self.output_bytes = int(labels.get(LABEL + "output_bytes", "0"))
        self.ignore_stop = labels.get(LABEL + "ignore_stop", "") == "true"
        self.limits = task.limits
        self.started = time.monotonic()
        self._stopped = asyncio.Event()
        self._done = asyncio.Event()
        self._exit: Exit | None = None

    def usage(self) -> common_pb2.TaskResourceUsage:
        elapsed = time.monotonic() - self.started
        out = common_pb2.TaskResourceUsage(
            cpu_seconds=round(elapsed * 0.01, 6), memory_peak_bytes=self.memory_mb * 1024 * 1024, pids_peak=1
        )
        out.wall_time.FromNanoseconds(int(elapsed * 1e9))
        return out

    def _outcome(self) -> tuple[float, Exit]:
        """When the task ends by itself and how."""
        limits = self.limits
        timeout = limits.execution_timeout.ToNanoseconds() / 1e9 if limits.HasField("execution_timeout") else 0
        if limits.memory_mb and self.memory_mb > limits.memory_mb:
            return min(self.seconds, 0.01), Exit(
                task_pb2.TASK_EXIT_REASON_OOM_KILLED, 137, f"killed: used {self.memory_mb} MiB of {limits.memory_mb}"
            )
        if limits.max_output_bytes and self.output_bytes > limits.max_output_bytes:
            return min(self.seconds, 0.01), Exit(
                task_pb2.TASK_EXIT_REASON_OUTPUT_LIMIT,
                None,
                f"killed: output passed {limits.max_output_bytes} bytes",
                output_bytes=limits.max_output_bytes,
                output_truncated=True,
            )
        if timeout and self.seconds > timeout:
            return timeout, Exit(task_pb2.TASK_EXIT_REASON_TIMED_OUT, None, f"killed after {timeout:g}s")
        exited = Exit(task_pb2.TASK_EXIT_REASON_EXITED, self.exit_code, f"exited with {self.exit_code}")
        return self.seconds, Exit(exited.reason, exited.exit_code, exited.detail, output_bytes=self.output_bytes)

    async def wait(self) -> Exit:
        if self._exit is None:
            after, outcome = self._outcome()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), after)
            if self._exit is None:
                self._exit = outcome
            self._done.set()
        return self._finish(self._exit)

    def _finish(self, outcome: Exit) -> Exit:
        return Exit(
            outcome.reason,
            outcome.exit_code,
            outcome.detail,
            self.usage(),
            outcome.output_bytes,
            outcome.output_truncated,
        )

    async def stop(self, grace_s: float) -> bool:
        if self.ignore_stop:
            return False
        if self._exit is None:
            self._exit = Exit(task_pb2.TASK_EXIT_REASON_STOPPED, None, "stopped on request")
        self._stopped.set()
        return True


class SimulatedRunner:
    name = "simulated"

    def __init__(self, default_seconds: float) -> None:
        self.default_seconds = default_seconds

    def tiers(self) -> list[sandbox_pb2.TierAvailability]:
        return [sandbox_pb2.TierAvailability(tier=t, available=True, runtime="simulated") for t in TIERS]

    async def refresh(self) -> None:
        return None

    async def remove_leftovers(self) -> int:
        return 0

    def warm_pools(self) -> list[task_pb2.WarmPool]:
        return []

    async def start(self, task: task_pb2.Task, on_output: OutputSink | None = None) -> Execution:
        return SimulatedExecution(task, self.default_seconds)

    async def close(self) -> None:
        return None
