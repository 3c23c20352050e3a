"""Tasks as Kubernetes Pods (``[sandbox].runner = "kubernetes"``), for the in-cluster orchestrator.

The runner creates a task's objects (``kubernetes_pods.manifests``), follows the
pod until it ends, maps its end to the exit reasons the Docker runner gives
(terminated ``OOMKilled`` -> OOM_KILLED; ``DeadlineExceeded`` -> TIMED_OUT; the
container's exit code otherwise), reads its log (cut at ``max_output_bytes``), and
deletes its objects. ``stop`` deletes the pod and returns True only once the API
no longer has it. Tier 1 is available when the API answers; Tier 2 when the gVisor
RuntimeClass exists.

It talks to the cluster through ``PodApi``; ``ClusterApi`` is the real one (in-cluster
config, else the kubeconfig). No cluster is reachable from the test machines: the
tests drive the runner against an in-memory ``PodApi`` and validate every generated
manifest against the Kubernetes schemas; running it on a cluster is described in
docs/sandbox.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol

from symbi_common.errors import FailedPreconditionError, UnavailableError
from symbi_proto.v1 import common_pb2, sandbox_pb2, task_pb2
from symbi_sandbox_orchestrator.kubernetes_pods import manifests, pod_name
from symbi_sandbox_orchestrator.runners import Exit, OutputSink

T = task_pb2
POLL_S = 0.5
KINDS = ("ConfigMap", "NetworkPolicy", "Pod")


class PodApi(Protocol):
    """The slice of the Kubernetes API the runner needs (blocking calls; run them in threads)."""

    def reachable(self) -> bool: ...

    def runtime_class_exists(self, name: str) -> bool: ...

    def create(self, manifest: dict[str, Any]) -> None: ...

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod as a dict (``status`` included), or None once it is gone."""
        ...

    def logs(self, namespace: str, name: str, limit_bytes: int) -> bytes: ...

    def delete(self, kind: str, namespace: str, name: str, grace_s: int) -> None: ...


class ClusterApi:
    """``PodApi`` over the official client."""

    def __init__(self) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.core = client.CoreV1Api()
        self.net = client.NetworkingV1Api()
        self.node = client.NodeV1Api()
        self.serializer = client.ApiClient()
        self.errors = client.exceptions.ApiException

    def reachable(self) -> bool:
        try:
            self.core.get_api_resources()
        except Exception:  # any failure means we cannot schedule pods here
            return False
        return True

    def runtime_class_exists(self, name: str) -> bool:
        try:
            self.node.read_runtime_class(name)
        except self.errors:
            return False
        return True

    def create(self, manifest: dict[str, Any]) -> None:
        namespace = manifest["metadata"]["namespace"]
        kind = manifest["kind"]
        if kind == "Pod":
            self.core.create_namespaced_pod(namespace, manifest)
        elif kind == "ConfigMap":
            self.core.create_namespaced_config_map(namespace, manifest)
        else:
            self.net.create_namespaced_network_policy(namespace, manifest)

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            pod = self.core.read_namespaced_pod(name, namespace)
        except self.errors as exc:
            if exc.status == 404:
                return None
            raise
        result: dict[str, Any] = self.serializer.sanitize_for_serialization(pod)
        return result

    def logs(self, namespace: str, name: str, limit_bytes: int) -> bytes:
        text = self.core.read_namespaced_pod_log(name, namespace, limit_bytes=limit_bytes or None)
        return str(text).encode()

    def delete(self, kind: str, namespace: str, name: str, grace_s: int) -> None:
        with contextlib.suppress(self.errors):
            if kind == "Pod":
                self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace_s)
            elif kind == "ConfigMap":
                self.core.delete_namespaced_config_map(name, namespace)
            else:
                self.net.delete_namespaced_network_policy(name, namespace)


def exit_of(pod: dict[str, Any] | None, task: task_pb2.Task) -> Exit | None:
    """How the pod ended, or None while it runs."""
    if pod is None:
        return Exit(T.TASK_EXIT_REASON_LOST, None, "the pod disappeared")
    status = pod.get("status") or {}
    phase = status.get("phase", "")
    if status.get("reason") == "DeadlineExceeded":
        timeout = task.limits.execution_timeout.ToNanoseconds() / 1e9
        return Exit(T.TASK_EXIT_REASON_TIMED_OUT, None, f"killed after {timeout:g}s")
    terminated = next(
        ((c.get("state") or {}).get("terminated") for c in status.get("containerStatuses") or []
         if (c.get("state") or {}).get("terminated")),
        None,
    )  # fmt: skip
    if phase not in ("Succeeded", "Failed") and terminated is None:
        waiting = next(((c.get("state") or {}).get("waiting") for c in status.get("containerStatuses") or []), None)
        if waiting and waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            return Exit(T.TASK_EXIT_REASON_START_FAILED, None, f"{waiting['reason']}: {waiting.get('message', '')}")
        return None
    if terminated is None:
        return Exit(T.TASK_EXIT_REASON_LOST, None, f"pod {phase} without a container status")
    code = int(terminated.get("exitCode", -1))
    if terminated.get("reason") == "OOMKilled":
        return Exit(T.TASK_EXIT_REASON_OOM_KILLED, code, f"killed: out of memory ({task.limits.memory_mb} MiB)")
    return Exit(T.TASK_EXIT_REASON_EXITED, code, f"exited with {code}")


class KubernetesExecution:
    runtime = "kubernetes"

    def __init__(self, api: PodApi, task: task_pb2.Task, namespace: str, on_output: OutputSink | None) -> None:
        self.api = api
        self.task = task
        self.namespace = namespace
        self.sandbox_id = pod_name(task)
        self.on_output = on_output
        self.started = time.monotonic()
        self._stopping = False
        self._result: Exit | None = None
        self._done = asyncio.Event()

    def usage(self) -> common_pb2.TaskResourceUsage:
        out = common_pb2.TaskResourceUsage()
        out.wall_time.FromNanoseconds(int((time.monotonic() - self.started) * 1e9))
        return out

    async def wait(self) -> Exit:
        if self._result is None:
            while (ended := await self._poll()) is None:  # noqa: ASYNC110 - the pod's status is polled from the API
                await asyncio.sleep(POLL_S)
            if self._stopping:
                ended = Exit(T.TASK_EXIT_REASON_STOPPED, None, "stopped on request")
            self._result = await self._finish(ended)
            self._done.set()
        return self._result

    async def _poll(self) -> Exit | None:
        return exit_of(await asyncio.to_thread(self.api.read_pod, self.namespace, self.sandbox_id), self.task)

    async def _finish(self, ended: Exit) -> Exit:
        cap = int(self.task.limits.max_output_bytes)
        log = b""
        with contextlib.suppress(Exception):  # a pod gone before its log was read has no log to give
            log = await asyncio.to_thread(self.api.logs, self.namespace, self.sandbox_id, cap + 1 if cap else 0)
        truncated = bool(cap) and len(log) > cap
        log = log[:cap] if cap else log
        if self.on_output is not None and log:
            self.on_output(1, 0, log, True)
        await self._delete(0)
        if truncated and ended.reason == T.TASK_EXIT_REASON_EXITED:
            ended = Exit(T.TASK_EXIT_REASON_OUTPUT_LIMIT, None, f"output passed {cap} bytes", output_truncated=True)
        return Exit(ended.reason, ended.exit_code, ended.detail, self.usage(), len(log), truncated)

    async def _delete(self, grace_s: int) -> None:
        for kind in KINDS:
            await asyncio.to_thread(self.api.delete, kind, self.namespace, self.sandbox_id, grace_s)

    async def stop(self, grace_s: float) -> bool:
        self._stopping = True
        await asyncio.to_thread(self.api.delete, "Pod", self.namespace, self.sandbox_id, max(0, int(grace_s)))
        deadline = time.monotonic() + grace_s + 60
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self.api.read_pod, self.namespace, self.sandbox_id) is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._done.wait(), 5)
                return True
            await asyncio.sleep(POLL_S)
        return False


class KubernetesRunner:
    name = "kubernetes"

    def __init__(self, api: PodApi, namespace: str, gvisor_runtime_class: str) -> None:
        self.api = api
        self.namespace = namespace
        self.gvisor = gvisor_runtime_class
        self._tiers = {sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER: False, sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR: False}

    async def refresh(self) -> None:
        reachable = await asyncio.to_thread(self.api.reachable)
        gvisor = reachable and await asyncio.to_thread(self.api.runtime_class_exists, self.gvisor)
        self._tiers = {sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER: reachable, sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR: gvisor}

    def tiers(self) -> list[sandbox_pb2.TierAvailability]:
        out = []
        for tier, available in self._tiers.items():
            runtime = f"RuntimeClass {self.gvisor}" if tier == sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR else "default"
            reason = "" if available else f"{runtime} is not available in the cluster"
            out.append(sandbox_pb2.TierAvailability(tier=tier, available=available, runtime=runtime, reason=reason))
        return out

    def warm_pools(self) -> list[task_pb2.WarmPool]:
        return []

    async def remove_leftovers(self) -> int:
        return 0  # pods outlive this process by design; the scheduler reconciles them through status reports

    async def start(self, task: task_pb2.Task, on_output: OutputSink | None = None) -> KubernetesExecution:
        if not self._tiers.get(task.tier):
            raise FailedPreconditionError(f"{sandbox_pb2.SandboxTier.Name(task.tier)} is not available in the cluster")
        try:
            for manifest in manifests(task, namespace=self.namespace, gvisor_runtime_class=self.gvisor):
                await asyncio.to_thread(self.api.create, manifest)
        except Exception as exc:
            raise UnavailableError(f"the cluster refused the task's objects: {exc}") from None
        return KubernetesExecution(self.api, task, self.namespace, on_output)

    async def close(self) -> None:
        return None
