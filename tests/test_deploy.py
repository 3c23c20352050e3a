"""The Helm chart and docker-compose file describe the real stack.

No cluster exists here, so the chart gets the strongest offline check: render it with
Helm's own engine (helm-python-sdk) for several value sets, validate every manifest
against the Kubernetes OpenAPI schemas of the oldest and newest supported versions
(strict: unknown fields fail), lint it, and check what the schemas cannot: every
service has exactly one hardened workload, probes hit declared ports, every
environment variable is one Symbi reads, and the rendered config file loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from symbi_common import catalog, envvars
from symbi_common.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "symbi"
KUBE_VERSIONS = ("1.25.0", "1.37.0")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
# Variables set for containers that are not Symbi settings.
FOREIGN_ENV: set[str] = set()

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-infrastructure": {
        "nats": {"bundled": False, "url": "nats://nats.infra:4222"},
        "redis": {"bundled": False, "url": "redis://valkey.infra:6379/0"},
        "qdrant": {"bundled": False, "url": "http://qdrant.infra:6333"},
        "openai": {"existingSecret": "symbi-openai"},
        "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
    },
    "scaled": {"services": {"policy": {"enabled": True, "kind": "Deployment", "replicas": 5}}},
}


def render(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name="demo", namespace="symbi")


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, text in render(values).items():
        if path.endswith(".yaml"):
            docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from doc["spec"]["template"]["spec"]["containers"]


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, manifests(VALUE_SETS[request.param])


def test_every_manifest_validates_against_kubernetes_schemas(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    assert docs
    for doc in docs:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_each_service_has_one_hardened_workload(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    workloads = {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
        for doc in docs
        if doc["kind"] in WORKLOAD_KINDS and doc["metadata"]["labels"].get("app.kubernetes.io/part-of") == "symbi"
    }
    assert set(catalog.SERVICE_NAMES) <= set(workloads)
    for name in catalog.SERVICE_NAMES:
        doc = workloads[name]
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = containers(doc)
        assert container["args"] == ["serve", name]
        hardening = container["securityContext"]
        assert hardening["readOnlyRootFilesystem"] is True
        assert hardening["allowPrivilegeEscalation"] is False
        assert hardening["capabilities"]["drop"] == ["ALL"]
        declared = {port["name"] for port in container["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in declared
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["resources"]["limits"]["memory"]
    assert workloads["sandbox-orchestrator"]["kind"] == "DaemonSet"
    assert workloads["audit"]["kind"] == "StatefulSet"


def test_containers_only_set_variables_symbi_reads(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS or doc["metadata"]["labels"].get("app.kubernetes.io/name") != "symbi":
            continue
        for container in containers(doc):
            for var in container.get("env", []):
                assert var["name"] in envvars.BY_NAME or var["name"] in FOREIGN_ENV, var["name"]


def test_infrastructure_is_bundled_or_external(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    stateful = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "StatefulSet"}
    bundled = {"demo-symbi-nats", "demo-symbi-redis", "demo-symbi-qdrant"}
    env = {var["name"]: var for c in containers(_workload(docs, "policy")) for var in c["env"]}
    if name == "external-infrastructure":
        assert not (stateful & bundled)
        assert env["SYMBI_NATS_URL"]["value"] == "nats://nats.infra:4222"
        assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "symbi-openai"
    else:
        assert bundled <= stateful
        assert env["SYMBI_NATS_URL"]["value"] == "nats://demo-symbi-nats:4222"
        assert "OPENAI_API_KEY" not in env


def test_rendered_config_file_is_valid_symbi_configuration(tmp_path: Path) -> None:
    (config_map,) = [doc for doc in manifests({}) if doc["kind"] == "ConfigMap"]
    path = tmp_path / "symbi.toml"
    path.write_text(config_map["data"]["symbi.toml"])
    settings = load_settings(path, environ={})
    assert settings.runtime.mode == "production"
    assert settings.mcp.tool_verification == "strict"


def test_scaled_services_get_disruption_budgets() -> None:
    budgets = {
        doc["metadata"]["name"] for doc in manifests(VALUE_SETS["scaled"]) if doc["kind"] == "PodDisruptionBudget"
    }
    assert "demo-symbi-policy" in budgets
    assert "demo-symbi-scheduler" not in budgets  # one replica: a budget would block node drains


def test_chart_lints_clean() -> None:
    report = helm.lint(str(CHART), strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"services": {"policy": {"enabled": True, "kind": "Deployment", "replicas": "three"}}}, "replicas"),
        ({"services": {"policy": {"enabled": True, "kind": "CronJob"}}}, "kind"),
        ({"nats": {"bundled": False, "url": ""}}, "nats.url is required"),
        ({"ports": {"metrics": 70000, "policyGrpc": 50051, "api": 8080}}, "metrics"),
        ({"unknownKey": True}, "unknownKey"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(values: dict[str, Any], problem: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(problem)):
        render(values)


def _workload(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (doc,) = [
        d
        for d in docs
        if d["kind"] in WORKLOAD_KINDS and d["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    return doc


# docker-compose.yml


def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_runs_every_service_from_the_one_image() -> None:
    services = compose()["services"]
    for name in catalog.SERVICE_NAMES:
        svc = services[name]
        assert svc["command"] == ["serve", name]
        assert svc["image"] == "${SYMBI_IMAGE:-symbi:local}"
        assert svc["depends_on"]["nats"] == {"condition": "service_healthy"}
        assert svc["read_only"] is True
        assert svc["cap_drop"] == ["ALL"]
        for var in svc["environment"]:
            assert var in envvars.BY_NAME, var
    for infra in ("nats", "valkey", "qdrant"):
        assert services[infra]["healthcheck"]["test"]
    assert services["context"]["depends_on"]["qdrant"] == {"condition": "service_healthy"}


def test_dockerfile_serves_every_service_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["symbi"]' in text
    assert "--frozen" in text  # the lock file decides every version
