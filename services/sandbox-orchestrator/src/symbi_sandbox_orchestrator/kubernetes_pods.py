"""The same task as Kubernetes objects: a Pod, its NetworkPolicy, and a ConfigMap for its program.

The mapping mirrors the Docker hardening (``docker_runner.hardening``):

==========================  ===================================================================
Docker                      Kubernetes
==========================  ===================================================================
runtime runsc (Tier 2)      ``runtimeClassName`` (the cluster's gVisor RuntimeClass)
user 65534                  ``runAsUser``/``runAsGroup`` 65534, ``runAsNonRoot``
read-only root              ``readOnlyRootFilesystem``
cap_drop ALL                ``capabilities.drop: [ALL]``; ``privileged: false``
no-new-privileges           ``allowPrivilegeEscalation: false``; seccomp ``RuntimeDefault``
network none                the chart's deny-all policy, and one per pod: no ingress, no egress unless granted
memory, CPU                 ``resources`` requests = limits (Guaranteed QoS: never over-committed)
tmpfs /tmp                  an ``emptyDir`` in memory, 64 MiB, at ``/tmp``
program at /symbi/task      a ConfigMap mounted read-only at ``/symbi/task``
timeout kill                ``activeDeadlineSeconds``
==========================  ===================================================================

Not expressible per pod: a pids limit (the kubelet's ``podPidsLimit`` is per node)
and block-I/O limits; the output cap is applied by the runner following the logs.
No service-account token is mounted, no service links, no host namespaces.
"""

from __future__ import annotations

import math
from typing import Any

from kubernetes import client

from symbi_proto.v1 import sandbox_pb2, task_pb2

MANAGED_BY = {"app.kubernetes.io/managed-by": "symbi"}
TMP_SIZE = "64Mi"
SCRIPT_DIR = "/symbi/task"
USER = 65534


def pod_name(task: task_pb2.Task) -> str:
    """A DNS-1123 name unique per task and attempt (task ids are UUIDs)."""
    return f"symbi-{task.task_id.lower()}-{task.attempt}"[:63].rstrip("-")


def labels(task: task_pb2.Task) -> dict[str, str]:
    tier = "tier2" if task.tier == sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR else "tier1"
    return {
        **MANAGED_BY,
        "symbi.dev/sandbox-task": "true",  # the chart's deny-all NetworkPolicy selects this
        "symbi.dev/task": task.task_id.lower(),
        "symbi.dev/agent": task.agent_id.lower()[:63],
        "symbi.dev/tier": tier,
        "symbi.dev/network": "granted" if task.network_access else "none",
    }


def pod_for(task: task_pb2.Task, *, namespace: str, gvisor_runtime_class: str = "gvisor") -> client.V1Pod:
    limits = task.limits
    spec = task.spec
    resources = {"memory": f"{limits.memory_mb}Mi", "cpu": f"{max(1, math.ceil(limits.cpu_cores * 1000))}m"}
    mounts = [client.V1VolumeMount(name="tmp", mount_path="/tmp")]  # noqa: S108 - inside the pod
    volumes = [
        client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit=TMP_SIZE))
    ]
    if spec.script:
        mounts.append(client.V1VolumeMount(name="program", mount_path=SCRIPT_DIR, read_only=True))
        source = client.V1ConfigMapVolumeSource(name=pod_name(task), default_mode=0o444)
        volumes.append(client.V1Volume(name="program", config_map=source))
    container = client.V1Container(
        name="task",
        image=spec.image,
        image_pull_policy="IfNotPresent",
        command=list(spec.entrypoint) or None,
        args=list(spec.command) or None,
        env=[client.V1EnvVar(name=k, value=v) for k, v in sorted(spec.env.items())] or None,
        working_dir=spec.working_dir or None,
        resources=client.V1ResourceRequirements(requests=resources, limits=resources),
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False,
            privileged=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            run_as_user=USER,
            run_as_group=USER,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
        volume_mounts=mounts,
    )
    timeout = limits.execution_timeout.ToNanoseconds() / 1e9
    pod_spec = client.V1PodSpec(
        containers=[container],
        restart_policy="Never",
        active_deadline_seconds=max(1, math.ceil(timeout)),
        automount_service_account_token=False,
        enable_service_links=False,
        host_network=False,
        host_pid=False,
        host_ipc=False,
        security_context=client.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=USER,
            run_as_group=USER,
            fs_group=USER,
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
        termination_grace_period_seconds=10,
        volumes=volumes,
    )
    if task.tier == sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR:
        pod_spec.runtime_class_name = gvisor_runtime_class
    metadata = client.V1ObjectMeta(name=pod_name(task), namespace=namespace, labels=labels(task))
    return client.V1Pod(api_version="v1", kind="Pod", metadata=metadata, spec=pod_spec)


def network_policy_for(task: task_pb2.Task, *, namespace: str) -> client.V1NetworkPolicy:
    """Only this pod; nothing in; nothing out unless the task was granted network access."""
    egress = [client.V1NetworkPolicyEgressRule(to=[client.V1NetworkPolicyPeer(
        ip_block=client.V1IPBlock(cidr="0.0.0.0/0"))])] if task.network_access else []  # fmt: skip
    spec = client.V1NetworkPolicySpec(
        pod_selector=client.V1LabelSelector(match_labels={"symbi.dev/task": task.task_id.lower()}),
        policy_types=["Ingress", "Egress"],
        ingress=[],
        egress=egress,
    )
    metadata = client.V1ObjectMeta(name=pod_name(task), namespace=namespace, labels=labels(task))
    return client.V1NetworkPolicy(api_version="networking.k8s.io/v1", kind="NetworkPolicy", metadata=metadata,
                                  spec=spec)  # fmt: skip


def program_for(task: task_pb2.Task, *, namespace: str) -> client.V1ConfigMap | None:
    if not task.spec.script:
        return None
    metadata = client.V1ObjectMeta(name=pod_name(task), namespace=namespace, labels=labels(task))
    return client.V1ConfigMap(api_version="v1", kind="ConfigMap", metadata=metadata,
                              data={"script.py": task.spec.script})  # fmt: skip


def manifests(task: task_pb2.Task, *, namespace: str, gvisor_runtime_class: str = "gvisor") -> list[dict[str, Any]]:
    """Every object of a task, as plain manifests (what ``kubectl apply`` would take)."""
    objects: list[Any] = [program_for(task, namespace=namespace), network_policy_for(task, namespace=namespace),
                          pod_for(task, namespace=namespace, gvisor_runtime_class=gvisor_runtime_class)]  # fmt: skip
    serializer = client.ApiClient()
    return [serializer.sanitize_for_serialization(o) for o in objects if o is not None]
