"""Tasks in Docker containers: Tier 1 under ``runc``, Tier 2 under ``runsc`` (gVisor).

Every container is hardened whatever the task asks (``hardening``): read-only root
filesystem, every capability dropped, ``no-new-privileges``, the unprivileged user
65534, no network unless the task was granted it, memory (no swap), CPU, pids and
block-I/O limits, a small ``noexec`` tmpfs at ``/tmp``, the task's program (if any)
mounted read-only at ``/symbi/task``. Images must already be on the node: nothing
is ever pulled.

One thread per task follows the container's output and its end: output is counted
and forwarded as it comes, and past ``max_output_bytes`` the container is killed
(OUTPUT_LIMIT); a timer kills it at ``execution_timeout`` (TIMED_OUT; under gVisor a
memory-starved process may stall rather than be OOM-killed, and this is the
backstop); Docker's ``OOMKilled`` gives OOM_KILLED; otherwise the exit code. Resource
use is sampled from ``docker stats`` once a second. The container is removed when
the task ends, and ``stop`` returns True only once Docker no longer knows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docker
import requests.exceptions
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container

from symbi_common.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from symbi_common.ids import new_id
from symbi_proto.v1 import common_pb2, sandbox_pb2, task_pb2
from symbi_sandbox_orchestrator.runners import Exit, OutputSink
from symbi_sandbox_orchestrator.runtimes import TIER_RUNTIMES, probe_docker
from symbi_sandbox_orchestrator.warm_pool import LABEL_WARM, STUB, Shape, WarmPool, deliver

log = logging.getLogger(__name__)

T = task_pb2
TIERS = {sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER: "Tier1", sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR: "Tier2"}
USER = "65534:65534"
TMPFS = "rw,nosuid,nodev,noexec,size=64m"
DEFAULT_PIDS = 256
MIN_GVISOR_PIDS = 96
SCRIPT_DIR = "/symbi/task"
LABEL_NODE = "symbi.node"
LABEL_TASK = "symbi.task"
DOCKER_TIMEOUT_S = 60
DEFAULT_WARM_MEMORY_MB = 256
DEFAULT_WARM_NANO_CPUS = 500_000_000


def hardening(task: task_pb2.Task, runtime: str, io_device: str | None) -> dict[str, Any]:
    """The ``containers.create`` keyword arguments every task container gets."""
    limits = task.limits
    pids = limits.max_pids or DEFAULT_PIDS
    if runtime == "runsc":
        pids = max(pids, MIN_GVISOR_PIDS)  # gVisor's own threads count against the limit
    options: dict[str, Any] = {
        "runtime": runtime,
        "user": USER,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "network_mode": "bridge" if task.network_access else "none",
        "mem_limit": f"{limits.memory_mb}m",
        "memswap_limit": f"{limits.memory_mb}m",
        "nano_cpus": round(limits.cpu_cores * 1e9),
        "pids_limit": pids,
        "tmpfs": {"/tmp": TMPFS},  # noqa: S108 - a tmpfs inside the container, not a host path
        "ipc_mode": "private",
        "hostname": "sandbox",
        "labels": {LABEL_TASK: task.task_id, "symbi.agent": task.agent_id, "symbi.attempt": str(task.attempt)},
    }
    if limits.disk_io_mbps and io_device:
        rate = int(limits.disk_io_mbps) * 1_000_000
        options["device_read_bps"] = [{"Path": io_device, "Rate": rate}]
        options["device_write_bps"] = [{"Path": io_device, "Rate": rate}]
    return options


def block_device(path: str) -> str | None:
    """The whole disk holding ``path`` (for block-I/O limits), or None if there is none to name."""
    try:
        dev = os.stat(path).st_dev
        sys_dir = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    except OSError:
        return None
    if (sys_dir / "partition").exists():
        sys_dir = sys_dir.parent
    device = Path("/dev") / sys_dir.name
    return str(device) if device.exists() else None


class DockerExecution:
    """One task's container, followed by its own thread."""

    def __init__(
        self,
        client: docker.DockerClient,
        container: Container,
        task: task_pb2.Task,
        runtime: str,
        loop: asyncio.AbstractEventLoop,
        on_output: OutputSink | None,
        scratch: Path | None,
    ) -> None:
        self.client = client
        self.container = container
        self.task = task
        self.runtime = runtime
        self.sandbox_id = container.name or container.id or ""
        self.loop = loop
        self.on_output = on_output
        self.scratch = scratch
        self.started = time.monotonic()
        self._future: asyncio.Future[Exit] = loop.create_future()
        self._stop_requested = threading.Event()
        self._timed_out = threading.Event()
        self._finished = threading.Event()
        self._usage = common_pb2.TaskResourceUsage()
        self._output = {1: 0, 2: 0}
        self._stream: Any = ()
        self.warm = False
        """It started in a warm pool container (see ``warm_pool``)."""
        self._thread = threading.Thread(target=self._follow, name=f"task-{task.task_id}", daemon=True)

    def attach(self) -> None:
        """Attach to the output before the container starts, so nothing a quick task writes is missed."""
        self._stream = self.container.attach(stdout=True, stderr=True, stream=True, logs=True, demux=True)

    def begin(self) -> None:
        self._thread.start()
        threading.Thread(target=self._sample, name=f"stats-{self.task.task_id}", daemon=True).start()

    # The follower thread -----------------------------------------------------------

    def _kill(self) -> None:
        """Kill from another thread: this one must keep draining the output, or a writer blocked on a
        full pipe can hold the kill up (seen under runsc)."""

        def kill() -> None:
            with contextlib.suppress(DockerException, requests.exceptions.RequestException):
                self.container.kill()

        threading.Thread(target=kill, name=f"kill-{self.task.task_id}", daemon=True).start()

    def _on_timeout(self) -> None:
        if not self._finished.is_set():
            self._timed_out.set()
            self._kill()

    def _follow(self) -> None:
        timeout = self.task.limits.execution_timeout.ToNanoseconds() / 1e9
        timer = threading.Timer(timeout, self._on_timeout)
        timer.daemon = True
        timer.start()
        try:
            outcome = self._stream_and_wait()
        except (DockerException, requests.exceptions.RequestException) as exc:
            outcome = Exit(T.TASK_EXIT_REASON_LOST, None, f"lost track of the container: {exc}")
        finally:
            timer.cancel()
            self._finished.set()
        self._remove()
        final = Exit(outcome.reason, outcome.exit_code, outcome.detail, self.usage(), sum(self._output.values()),
                     outcome.output_truncated)  # fmt: skip
        self.loop.call_soon_threadsafe(_resolve, self._future, final)

    def _stream_and_wait(self) -> Exit:
        cap = self.task.limits.max_output_bytes or 0
        truncated = False
        for stdout, stderr in self._stream:
            for number, data in ((1, stdout), (2, stderr)):
                if not data or truncated:
                    continue
                total = sum(self._output.values())
                if cap and total + len(data) > cap:
                    data, truncated = data[: cap - total], True
                if data:
                    self._forward(number, data)
                if truncated:
                    self._kill()
        for number in (1, 2):
            self._forward(number, b"", eof=True)
        result = self.container.wait(timeout=DOCKER_TIMEOUT_S)
        code = int(result.get("StatusCode", -1))
        self.container.reload()
        state = self.container.attrs.get("State", {})
        timeout = self.task.limits.execution_timeout.ToNanoseconds() / 1e9
        if self._stop_requested.is_set():
            return Exit(T.TASK_EXIT_REASON_STOPPED, None, "stopped on request")
        if self._timed_out.is_set():
            return Exit(T.TASK_EXIT_REASON_TIMED_OUT, None, f"killed after {timeout:g}s")
        if truncated:
            return Exit(T.TASK_EXIT_REASON_OUTPUT_LIMIT, None, f"killed: output passed {cap} bytes",
                        output_truncated=True)  # fmt: skip
        if state.get("OOMKilled"):
            return Exit(
                T.TASK_EXIT_REASON_OOM_KILLED, code, f"killed: out of memory ({self.task.limits.memory_mb} MiB)"
            )
        return Exit(T.TASK_EXIT_REASON_EXITED, code, f"exited with {code}")

    def _forward(self, number: int, data: bytes, *, eof: bool = False) -> None:
        offset = self._output[number]
        self._output[number] += len(data)
        if self.on_output is not None:
            sink = self.on_output
            self.loop.call_soon_threadsafe(sink, number, offset, data, eof)

    def _sample(self) -> None:
        """``docker stats`` once a second while the task runs: peaks and totals."""
        peak_memory = self._usage.memory_peak_bytes
        while not self._finished.wait(1.0 if peak_memory else 0.05):
            try:
                stats = self.container.stats(stream=False, one_shot=True)
            except (DockerException, requests.exceptions.RequestException, ValueError):
                continue
            memory = int((stats.get("memory_stats") or {}).get("usage", 0))
            peak_memory = max(peak_memory, memory)
            usage = self._usage
            usage.memory_bytes = memory
            usage.memory_peak_bytes = peak_memory
            cpu = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage", 0)
            usage.cpu_seconds = max(usage.cpu_seconds, cpu / 1e9)
            usage.pids_peak = max(usage.pids_peak, int((stats.get("pids_stats") or {}).get("current", 0)))
            for entry in (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
                op = str(entry.get("op", "")).lower()
                if op == "read":
                    usage.disk_read_bytes = max(usage.disk_read_bytes, int(entry.get("value", 0)))
                elif op == "write":
                    usage.disk_write_bytes = max(usage.disk_write_bytes, int(entry.get("value", 0)))
            for net in (stats.get("networks") or {}).values():
                usage.network_rx_bytes = max(usage.network_rx_bytes, int(net.get("rx_bytes", 0)))
                usage.network_tx_bytes = max(usage.network_tx_bytes, int(net.get("tx_bytes", 0)))

    def _remove(self) -> None:
        for _ in range(3):
            try:
                self.container.remove(force=True)
                break
            except NotFound:
                break
            except (DockerException, requests.exceptions.RequestException) as exc:
                log.warning("cannot remove container %s yet: %s", self.sandbox_id, exc)
                time.sleep(0.5)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    # The worker's side -------------------------------------------------------------

    def usage(self) -> common_pb2.TaskResourceUsage:
        out = common_pb2.TaskResourceUsage()
        out.CopyFrom(self._usage)
        if self._finished.is_set():
            out.memory_bytes = 0
        out.wall_time.FromNanoseconds(int((time.monotonic() - self.started) * 1e9))
        return out

    async def wait(self) -> Exit:
        return await asyncio.shield(self._future)

    async def stop(self, grace_s: float) -> bool:
        if not self._future.done():
            self._stop_requested.set()
            with contextlib.suppress(NotFound):
                try:
                    await asyncio.to_thread(self.container.stop, timeout=max(0, int(grace_s)))
                except (DockerException, requests.exceptions.RequestException) as exc:
                    log.warning("stopping %s: %s", self.sandbox_id, exc)
        try:
            await asyncio.wait_for(asyncio.shield(self._future), grace_s + DOCKER_TIMEOUT_S)
        except TimeoutError:
            return False
        return await self.gone()

    async def gone(self) -> bool:
        try:
            await asyncio.to_thread(self.client.containers.get, self.container.id)
        except NotFound:
            return True
        except (DockerException, requests.exceptions.RequestException):
            return False
        return False


def _resolve(future: asyncio.Future[Exit], outcome: Exit) -> None:
    if not future.done():
        future.set_result(outcome)


class DockerRunner:
    """The ``Runner`` for a local Docker daemon (``DOCKER_HOST`` or the default socket)."""

    name = "docker"

    def __init__(
        self,
        node: str,
        scratch_root: Path,
        *,
        base_url: str | None = None,
        warm_size: int = 0,
        warm_images: frozenset[str] = frozenset(),
    ) -> None:
        self.node = node
        self.scratch_root = scratch_root
        self.base_url = base_url
        self._client: docker.DockerClient | None = None
        self._runtimes: frozenset[str] = frozenset()
        self._detail = "not probed yet"
        self._io_device: str | None = None
        self.pool = WarmPool(self._create_warm, self._sweep_warm, scratch_root / "warm", node, size=warm_size,
                             images=warm_images)  # fmt: skip

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = (
                docker.DockerClient(base_url=self.base_url, timeout=DOCKER_TIMEOUT_S)
                if self.base_url
                else docker.from_env(timeout=DOCKER_TIMEOUT_S)
            )
        return self._client

    async def refresh(self) -> None:
        """Ask the daemon which runtimes it has now (tiers come and go with it)."""
        probe = await asyncio.to_thread(probe_docker, self.base_url)
        self._runtimes = probe.runtimes if probe.reachable else frozenset()
        self._detail = probe.describe()
        if probe.reachable and self._io_device is None:
            with contextlib.suppress(DockerException, requests.exceptions.RequestException):
                root = (await asyncio.to_thread(self.client.info)).get("DockerRootDir", "/var/lib/docker")
                self._io_device = block_device(root)
                self._prewarm()

    def _prewarm(self) -> None:
        """Warm the default shape (the first warm image, the scheduler's default limits) in each tier."""
        if not self.pool.size or not self.pool.images:
            return
        image = sorted(self.pool.images)[0]
        for tier, name in TIERS.items():
            if TIER_RUNTIMES[name] in self._runtimes:
                self.pool.prewarm(Shape(tier, image, DEFAULT_WARM_MEMORY_MB, DEFAULT_WARM_NANO_CPUS, 0, 0))

    def warm_pools(self) -> list[task_pb2.WarmPool]:
        return self.pool.stats()

    def tiers(self) -> list[sandbox_pb2.TierAvailability]:
        out = []
        for tier, name in TIERS.items():
            runtime = TIER_RUNTIMES[name]
            available = runtime in self._runtimes
            reason = "" if available else f"{runtime} is not available ({self._detail})"
            out.append(sandbox_pb2.TierAvailability(tier=tier, available=available, runtime=runtime, reason=reason))
        return out

    async def remove_leftovers(self) -> int:
        """Remove containers a previous instance on this node left behind (a crash)."""
        if not self._runtimes:
            return 0

        def sweep() -> int:
            found = self.client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={self.node}"})
            for container in found:
                with contextlib.suppress(NotFound):
                    container.remove(force=True)
            return len(found)

        return await asyncio.to_thread(sweep)

    def runtime_for(self, tier: int) -> str:
        """The runtime of ``tier`` on this node; ``FailedPreconditionError`` if the node cannot run it."""
        runtime = TIER_RUNTIMES.get(TIERS.get(tier, ""), "")  # type: ignore[call-overload]
        if not runtime or runtime not in self._runtimes:
            raise FailedPreconditionError(f"no {runtime or 'runtime'} for {TIERS.get(tier, 'this tier')} here")  # type: ignore[call-overload]
        return runtime

    @property
    def io_device(self) -> str | None:
        """The disk block-I/O limits apply to (None when there is none to name)."""
        return self._io_device

    async def start(self, task: task_pb2.Task, on_output: OutputSink | None = None) -> DockerExecution:
        runtime = self.runtime_for(task.tier)
        image = task.spec.image
        if not image:
            raise InvalidArgumentError("the task names no image")
        warm = self.pool.take(task)
        loop = asyncio.get_running_loop()
        if warm is not None:
            execution = DockerExecution(self.client, warm.container, task, runtime, loop, on_output, warm.scratch)
            execution.warm = True
            try:
                await asyncio.to_thread(execution.attach)
                await asyncio.to_thread(deliver, warm, task)
            except (DockerException, requests.exceptions.RequestException, OSError) as exc:
                execution._remove()
                raise FailedPreconditionError(f"the warm container did not take the task: {_short(exc)}") from None
            execution.begin()
            return execution
        scratch = self._scratch(task) if task.spec.script else None
        try:
            container = await asyncio.to_thread(self._create, task, runtime, scratch)
        except BaseException:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        execution = DockerExecution(self.client, container, task, runtime, loop, on_output, scratch)
        try:
            await asyncio.to_thread(execution.attach)
            await asyncio.to_thread(container.start)
        except (DockerException, requests.exceptions.RequestException) as exc:
            execution._remove()
            raise FailedPreconditionError(f"the container did not start: {_short(exc)}") from None
        execution.begin()
        return execution

    def _create(self, task: task_pb2.Task, runtime: str, scratch: Path | None) -> Container:
        spec = task.spec
        try:
            self.client.images.get(spec.image)
        except ImageNotFound:
            raise FailedPreconditionError(
                f"image {spec.image} is not on node {self.node}; images are built locally "
                "(scripts/build-images.sh), never pulled"
            ) from None
        except (DockerException, requests.exceptions.RequestException) as exc:
            raise UnavailableError(f"Docker does not answer: {_short(exc)}") from None
        options = hardening(task, runtime, self._io_device)
        options["labels"][LABEL_NODE] = self.node
        if scratch is not None:
            options["volumes"] = {str(scratch): {"bind": SCRIPT_DIR, "mode": "ro"}}
        try:
            return self.client.containers.create(
                spec.image,
                command=list(spec.command) or None,
                entrypoint=list(spec.entrypoint) or None,
                environment=dict(spec.env),
                working_dir=spec.working_dir or None,
                name=f"symbi-{task.task_id}-{task.attempt}",
                detach=True,
                **options,
            )
        except APIError as exc:
            raise InvalidArgumentError(f"Docker refused the container: {_short(exc)}") from None
        except (DockerException, requests.exceptions.RequestException) as exc:
            raise UnavailableError(f"Docker does not answer: {_short(exc)}") from None

    def _create_warm(self, template: task_pb2.Task, scratch: Path, labels: dict[str, str]) -> Container:
        """A pool container: the template's limits and hardening, the stub as PID 1, stdin open."""
        runtime = TIER_RUNTIMES[TIERS[template.tier]]
        options = hardening(template, runtime, self._io_device)
        options["labels"] = {LABEL_NODE: self.node, **labels}
        options["volumes"] = {str(scratch): {"bind": SCRIPT_DIR, "mode": "ro"}}
        return self.client.containers.create(
            template.spec.image,
            entrypoint=["python3", "-c", STUB],
            stdin_open=True,
            name=f"symbi-warm-{new_id()}",
            detach=True,
            **options,
        )

    def _sweep_warm(self) -> int:
        found = self.client.containers.list(
            all=True, filters={"label": [f"{LABEL_NODE}={self.node}", f"{LABEL_WARM}=true"]}
        )
        for container in found:
            with contextlib.suppress(NotFound):
                container.remove(force=True)
        return len(found)

    def _scratch(self, task: task_pb2.Task) -> Path:
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix=f"{task.task_id}-", dir=self.scratch_root))
        (directory / "script.py").write_text(task.spec.script, encoding="utf-8")
        directory.chmod(0o755)
        (directory / "script.py").chmod(0o644)
        return directory

    async def close(self) -> None:
        await self.pool.close()
        if self._client is not None:
            self._client.close()
            self._client = None


def _short(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).splitlines()[0][:300] if text else type(exc).__name__
