"""The Kubernetes backend: every generated object is valid for Kubernetes 1.25-1.37, hardened as the
Docker containers are, and the runner maps a pod's end to the same exit reasons.

No cluster is reachable here: the runner is driven against ``FakeCluster``, an
in-memory ``PodApi`` that moves pods through the phases a kubelet reports.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes_validate
import pytest

from symbi_common.errors import FailedPreconditionError
from symbi_proto.v1 import sandbox_pb2, task_pb2
from symbi_sandbox_orchestrator.kubernetes_pods import manifests, pod_name
from symbi_sandbox_orchestrator.kubernetes_runner import KubernetesRunner

T = task_pb2
TIER1, TIER2 = sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER, sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR
KUBE_VERSIONS = ("1.25.0", "1.37.0")


def task(tier: int = TIER1, *, network: bool = False, script: str = "", task_id: str = "") -> task_pb2.Task:
    agent = "0190aaaa-0000-7000-8000-0000000000aa"
    t = T.Task(task_id=task_id or "0190AAAA-0000-7000-8000-000000000001", agent_id=agent, attempt=2,
               network_access=network)  # fmt: skip
    t.tier = tier  # type: ignore[assignment]
    t.limits.memory_mb, t.limits.cpu_cores = 512, 0.25
    t.limits.execution_timeout.FromMilliseconds(30_500)
    t.limits.max_output_bytes = 1000
    t.spec.image = "symbi/base:bookworm"
    t.spec.entrypoint.append("python3")
    t.spec.command.extend(["/symbi/task/script.py"] if script else ["-c", "print(1)"])
    t.spec.env["MODE"] = "fast"
    t.spec.working_dir = "/tmp"
    t.spec.script = script
    return t


@pytest.mark.parametrize(
    "variant",
    [task(), task(TIER2, network=True, script="print('hi')\n")],
    ids=["tier1-no-network", "tier2-network-script"],
)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_is_valid_for_kubernetes(variant: task_pb2.Task, version: str) -> None:
    for manifest in manifests(variant, namespace="symbi-tasks"):
        kubernetes_validate.validate(manifest, version, strict=True)


def test_the_pod_is_hardened_like_the_container() -> None:
    objects = {m["kind"]: m for m in manifests(task(TIER2, script="print('hi')\n"), namespace="ns")}
    assert set(objects) == {"Pod", "NetworkPolicy", "ConfigMap"}
    pod = objects["Pod"]
    spec = pod["spec"]
    assert pod["metadata"]["name"] == "symbi-0190aaaa-0000-7000-8000-000000000001-2"
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["activeDeadlineSeconds"] == 31
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["runAsUser"] == 65534
    assert container["resources"]["limits"] == container["resources"]["requests"] == {"memory": "512Mi", "cpu": "250m"}
    assert {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]} == {
        "/tmp": False,
        "/symbi/task": True,
    }
    assert objects["ConfigMap"]["data"] == {"script.py": "print('hi')\n"}
    assert pod["metadata"]["labels"]["symbi.dev/sandbox-task"] == "true"


def test_network_only_when_granted_and_tier1_has_no_runtime_class() -> None:
    closed = {m["kind"]: m for m in manifests(task(), namespace="ns")}
    assert "runtimeClassName" not in closed["Pod"]["spec"]
    assert closed["NetworkPolicy"]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert closed["NetworkPolicy"]["spec"]["egress"] == []
    assert closed["NetworkPolicy"]["spec"]["ingress"] == []
    assert "ConfigMap" not in closed
    opened = {m["kind"]: m for m in manifests(task(network=True), namespace="ns")}
    assert opened["NetworkPolicy"]["spec"]["egress"] == [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]


class FakeCluster:
    """Pods that run for ``polls`` reads, then end as ``outcome`` says."""

    def __init__(self, *, gvisor: bool = True, outcome: dict[str, Any] | None = None, polls: int = 2) -> None:
        self.gvisor = gvisor
        self.outcome = outcome or {"phase": "Succeeded", "terminated": {"exitCode": 0, "reason": "Completed"}}
        self.polls = polls
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.reads: dict[str, int] = {}
        self.deleted: list[tuple[str, str]] = []
        self.log = b"hello\n"

    def reachable(self) -> bool:
        return True

    def runtime_class_exists(self, name: str) -> bool:
        return self.gvisor and name == "gvisor"

    def create(self, manifest: dict[str, Any]) -> None:
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = manifest

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        if ("Pod", name) not in self.objects:
            return None
        self.reads[name] = self.reads.get(name, 0) + 1
        if self.reads[name] <= self.polls:
            return {"status": {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}}
        status: dict[str, Any] = {"phase": self.outcome.get("phase", "Pending"), "reason": self.outcome.get("reason")}
        if "terminated" in self.outcome:
            status["containerStatuses"] = [{"state": {"terminated": self.outcome["terminated"]}}]
        if "waiting" in self.outcome:
            status = {"phase": "Pending", "containerStatuses": [{"state": {"waiting": self.outcome["waiting"]}}]}
        return {"status": status}

    def logs(self, namespace: str, name: str, limit_bytes: int) -> bytes:
        return self.log[:limit_bytes] if limit_bytes else self.log

    def delete(self, kind: str, namespace: str, name: str, grace_s: int) -> None:
        if self.objects.pop((kind, name), None) is not None:
            self.deleted.append((kind, name))


async def runner_for(cluster: FakeCluster) -> KubernetesRunner:
    runner = KubernetesRunner(cluster, "ns", "gvisor")
    await runner.refresh()
    return runner


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("symbi_sandbox_orchestrator.kubernetes_runner.POLL_S", 0.001)


@pytest.mark.parametrize(
    ("outcome", "reason", "code", "detail"),
    [
        ({"phase": "Succeeded", "terminated": {"exitCode": 0}}, T.TASK_EXIT_REASON_EXITED, 0, "exited with 0"),
        ({"phase": "Failed", "terminated": {"exitCode": 3}}, T.TASK_EXIT_REASON_EXITED, 3, "exited with 3"),
        (
            {"phase": "Failed", "terminated": {"exitCode": 137, "reason": "OOMKilled"}},
            T.TASK_EXIT_REASON_OOM_KILLED,
            137,
            "killed: out of memory (512 MiB)",
        ),
        ({"phase": "Failed", "reason": "DeadlineExceeded"}, T.TASK_EXIT_REASON_TIMED_OUT, None, "killed after 30.5s"),
        (
            {"waiting": {"reason": "ErrImagePull", "message": "not found"}},
            T.TASK_EXIT_REASON_START_FAILED,
            None,
            "ErrImagePull: not found",
        ),
    ],
)
async def test_a_pods_end_maps_to_the_exit_reasons(
    outcome: dict[str, Any], reason: int, code: int | None, detail: str
) -> None:
    cluster = FakeCluster(outcome=outcome)
    runner = await runner_for(cluster)
    execution = await runner.start(task(TIER2, script="print(1)\n"))
    assert {kind for kind, _ in cluster.objects} == {"Pod", "NetworkPolicy", "ConfigMap"}
    ended = await execution.wait()
    assert (ended.reason, ended.exit_code, ended.detail) == (reason, code, detail)
    assert cluster.objects == {}  # every object of the task is deleted
    assert ended.usage.wall_time.ToNanoseconds() > 0


async def test_output_beyond_the_cap_is_cut() -> None:
    cluster = FakeCluster()
    cluster.log = b"x" * 5000
    chunks: list[bytes] = []
    runner = await runner_for(cluster)
    execution = await runner.start(task(), on_output=lambda stream, offset, data, eof: chunks.append(data))
    ended = await execution.wait()
    assert (ended.reason, ended.output_bytes, ended.output_truncated) == (T.TASK_EXIT_REASON_OUTPUT_LIMIT, 1000, True)
    assert chunks == [b"x" * 1000]


async def test_stop_returns_once_the_pod_is_gone() -> None:
    cluster = FakeCluster(polls=10**9)  # never ends by itself
    runner = await runner_for(cluster)
    execution = await runner.start(task())
    waiter = asyncio.ensure_future(execution.wait())
    assert await execution.stop(1)
    ended = await waiter
    assert ended.reason in (T.TASK_EXIT_REASON_STOPPED, T.TASK_EXIT_REASON_LOST)
    assert ("Pod", pod_name(task())) in cluster.deleted


async def test_tier2_needs_the_gvisor_runtime_class() -> None:
    runner = await runner_for(FakeCluster(gvisor=False))
    tiers = {t.tier: t for t in runner.tiers()}
    assert tiers[TIER1].available
    assert not tiers[TIER2].available
    assert tiers[TIER2].reason == "RuntimeClass gvisor is not available in the cluster"
    with pytest.raises(FailedPreconditionError, match="SANDBOX_TIER_TIER2_GVISOR is not available in the cluster"):
        await runner.start(task(TIER2))
