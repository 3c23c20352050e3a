"""The Helm chart describes the real stack, for a small install, production and external dependencies.

No cluster exists here, so the chart gets the strongest offline check: render it with
Helm's own engine (helm-python-sdk) for several value sets, validate every manifest
against the Kubernetes OpenAPI schemas of the oldest and newest supported versions
(strict: unknown fields fail), the ServiceMonitor against the prometheus-operator CRD's
models, lint it, and check what the schemas cannot: every service has exactly one hardened
workload, probes hit declared ports, every environment variable is one Symbi reads, every
file a variable names is mounted from the right Secret or ConfigMap, secrets reach only
the services that need them, and the rendered config file loads.
"""

from __future__ import annotations

import base64
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

from symbi_common import catalog, envvars
from symbi_common.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "symbi"
KUBE_VERSIONS = ("1.25.0", "1.37.0")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
CRD_KINDS = {"ServiceMonitor"}
# Variables set only where a Secret or file is needed, and the only services that get them.
SECRET_ENV = {
    "SYMBI_API_ADMIN_KEY": {"api"},
    "OPENAI_API_KEY": {"context"},
    "QDRANT_API_KEY": {"context"},
    "SYMBI_MESSAGING_ISSUER_FILE": {"lifecycle"},
    "SYMBI_AUDIT_SIGNING_KEY_FILE": {"audit"},
    "SYMBI_POLICY_DIR": {"policy"},
}
POLICY_FILES = {path.name: path.read_text() for path in sorted((ROOT / "examples" / "policies").glob("*.yaml"))}

PRODUCTION: dict[str, Any] = {
    "image": {"repository": "registry.example.com/symbi", "tag": "0.1.0", "pullPolicy": "IfNotPresent"},
    "imagePullSecrets": [{"name": "registry"}],
    "config": {"telemetry": {"otlp_endpoint": "http://otel-collector.observability:4318/v1/traces"}},
    "policies": POLICY_FILES,
    "nats": {"bundled": True, "url": "", "auth": {"enabled": True, "existingSecret": "symbi-nats-auth"}},
    "auditSigningKey": {"existingSecret": "symbi-audit-key"},
    "apiAdminKey": {"create": False, "existingSecret": "symbi-api-admin"},
    "openai": {"existingSecret": "symbi-openai"},
    "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    "networkPolicy": {
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "apiFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}],
    },
    "sandbox": {"runtimeClass": {"create": True, "handler": "runsc", "nodeSelector": {"sandbox.gvisor": "true"}}},
    "services": {
        name: {
            "enabled": True,
            "kind": {"audit": "StatefulSet", "sandbox-orchestrator": "DaemonSet"}.get(name, "Deployment"),
            "replicas": {"audit": 1, "scheduler": 2, "sandbox-orchestrator": 1}.get(name, 3),
            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        }
        for name in catalog.SERVICE_NAMES
    },
}
PRODUCTION["services"]["audit"]["storage"] = "100Gi"
PRODUCTION["services"]["mcp-gateway"] |= {
    "extraVolumes": [{"name": "trust", "configMap": {"name": "mcp-trust-bundles"}}],
    "extraVolumeMounts": [{"name": "trust", "mountPath": "/etc/symbi/mcp-trust", "readOnly": True}],
    "extraEnv": [{"name": "SYMBI_MCP_KEYS_DIR", "value": "/etc/symbi/mcp-trust"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "production": PRODUCTION,
    "external-dependencies": {
        "nats": {
            "bundled": False,
            "url": "nats://nats.infra:4222",
            "auth": {"enabled": True, "existingSecret": "nats-auth"},
        },
        "redis": {"bundled": False, "url": "redis://valkey.infra:6379/0"},
        "qdrant": {"bundled": False, "url": "https://qdrant.infra:6333", "apiKey": {"existingSecret": "qdrant"}},
        "openai": {"existingSecret": "symbi-openai"},
        "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
        "sandbox": {"runtimeClass": {"create": False}},
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


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
        for doc in docs
        if doc["kind"] in WORKLOAD_KINDS and doc["metadata"]["labels"].get("app.kubernetes.io/part-of") == "symbi"
    }


def services(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The workloads of Symbi's own services (not the bundled NATS, Valkey and Qdrant)."""
    return {name: doc for name, doc in workloads(docs).items() if name in catalog.SERVICE_NAMES}


def env_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for c in containers(doc) for var in c.get("env", [])}


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, manifests(VALUE_SETS[request.param])


def test_every_manifest_validates_against_kubernetes_schemas(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # not in the Kubernetes schemas: see test_the_service_monitor_scrapes_every_service
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_each_service_has_one_hardened_workload(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    found = workloads(docs)
    assert set(catalog.SERVICE_NAMES) <= set(found)
    for name in catalog.SERVICE_NAMES:
        doc = found[name]
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
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
        assert pod["automountServiceAccountToken"] is (name == "sandbox-orchestrator")
    assert found["sandbox-orchestrator"]["kind"] == "DaemonSet"
    assert found["audit"]["kind"] == "StatefulSet"
    (claim,) = found["audit"]["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for c in containers(found["audit"]) for m in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/symbi"  # the audit log is on the persistent volume


def test_containers_only_set_variables_symbi_reads(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for name, doc in services(docs).items():
        for var in env_of(doc):
            assert var in envvars.BY_NAME, var
            assert name in SECRET_ENV.get(var, {name}), f"{name} must not get {var}"


def test_every_file_a_variable_names_is_mounted(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Paths in SYMBI_* variables point into a mounted volume, and into its projected items."""
    _, docs = rendered
    for name, doc in services(docs).items():
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        (container,) = containers(doc)
        mounts = {PurePosixPath(m["mountPath"]): m["name"] for m in container["volumeMounts"]}
        assert set(mounts.values()) <= set(volumes) | claims, name
        for var in container["env"]:
            value = str(var.get("value", ""))
            if not value.startswith("/etc/") or var["name"] == "SYMBI_STATE_DIR":
                continue
            path = PurePosixPath(value)
            (where, volume_name) = next(
                ((m, v) for m, v in mounts.items() if m in path.parents or m == path), (None, "")
            )
            assert where is not None, f"{name}: {var['name']}={value} is in no mounted volume"
            source = volumes[volume_name].get("secret") or volumes[volume_name].get("configMap") or {}
            if source.get("items") and path != where:
                assert str(path.relative_to(where)) in {i["path"] for i in source["items"]}, (name, var["name"])


def test_infrastructure_is_bundled_or_external(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    stateful = {doc["metadata"]["name"] for doc in of_kind(docs, "StatefulSet")}
    bundled = {"demo-symbi-nats", "demo-symbi-redis", "demo-symbi-qdrant"}
    found = workloads(docs)
    policy, context = env_of(found["policy"]), env_of(found["context"])
    if name == "external-dependencies":
        assert not (stateful & bundled)
        assert policy["SYMBI_NATS_URL"]["value"] == "nats://nats.infra:4222"
        assert policy["SYMBI_REDIS_URL"]["value"] == "redis://valkey.infra:6379/0"
        assert context["QDRANT_URL"]["value"] == "https://qdrant.infra:6333"
        assert context["QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "qdrant", "key": "QDRANT_API_KEY"}
        assert context["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "symbi-openai"
        assert not of_kind(docs, "RuntimeClass")
    else:
        assert bundled <= stateful
        assert policy["SYMBI_NATS_URL"]["value"] == "nats://demo-symbi-nats:4222"
        assert "QDRANT_API_KEY" not in context


def test_nats_authorization_reaches_the_server_and_every_service(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    found = services(docs)
    secret = {"production": "symbi-nats-auth", "external-dependencies": "nats-auth"}.get(name)
    for service, doc in found.items():
        env = env_of(doc)
        if secret is None:
            assert "SYMBI_NATS_CREDENTIALS" not in env
            continue
        assert env["SYMBI_NATS_CREDENTIALS"]["value"] == "/etc/symbi/nats/service.creds"
        (volume,) = [v for v in doc["spec"]["template"]["spec"]["volumes"] if v["name"] == "nats-auth"]
        assert volume["secret"]["secretName"] == secret
        items = {item["key"] for item in volume["secret"]["items"]}
        assert items == ({"service.creds", "issuer.json"} if service == "lifecycle" else {"service.creds"})
    nats = [doc for doc in of_kind(docs, "StatefulSet") if doc["metadata"]["name"] == "demo-symbi-nats"]
    if name == "production":
        (server,) = nats
        (container,) = containers(server)
        assert container["args"][:2] == ["-c", "/etc/nats-auth/nats-auth.conf"]
        assert "-js" in container["args"]
        (volume,) = [v for v in server["spec"]["template"]["spec"]["volumes"] if v["name"] == "nats-auth"]
        assert [item["key"] for item in volume["secret"]["items"]] == ["nats-auth.conf"]
    elif nats:
        (container,) = containers(nats[0])
        assert "-c" not in container["args"]


def test_production_scales_and_wires_secrets_policies_and_telemetry() -> None:
    docs = manifests(PRODUCTION)
    found = workloads(docs)
    for service in ("policy", "lifecycle", "api", "context", "mcp-gateway"):
        assert found[service]["spec"]["replicas"] == 3
        (container,) = containers(found[service])
        assert container["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
        assert container["image"] == "registry.example.com/symbi:0.1.0"
    assert found["audit"]["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "100Gi"
    budgets = {doc["metadata"]["name"] for doc in of_kind(docs, "PodDisruptionBudget")}
    assert {"demo-symbi-policy", "demo-symbi-api", "demo-symbi-scheduler"} <= budgets
    assert "demo-symbi-audit" not in budgets

    audit_env = env_of(found["audit"])
    assert audit_env["SYMBI_AUDIT_SIGNING_KEY_FILE"]["value"] == "/etc/symbi/audit/signing-key.pem"
    api_env = env_of(found["api"])
    assert api_env["SYMBI_API_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "symbi-api-admin",
        "key": "admin-key",
    }
    assert not of_kind(docs, "Secret")  # every secret is the operator's own

    (policies,) = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"] == "demo-symbi-policies"]
    assert policies["data"] == {name: text.rstrip("\n") + "\n" for name, text in POLICY_FILES.items()}
    assert env_of(found["policy"])["SYMBI_POLICY_DIR"]["value"] == "/etc/symbi/policies"

    gateway = found["mcp-gateway"]["spec"]["template"]["spec"]
    assert gateway["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert env_of(found["mcp-gateway"])["SYMBI_MCP_KEYS_DIR"]["value"] == "/etc/symbi/mcp-trust"

    (runtime_class,) = of_kind(docs, "RuntimeClass")
    orchestrator = env_of(found["sandbox-orchestrator"])
    assert runtime_class["metadata"]["name"] == orchestrator["SYMBI_SANDBOX_GVISOR_RUNTIME_CLASS"]["value"]
    assert runtime_class["handler"] == "runsc"
    assert runtime_class["scheduling"]["nodeSelector"] == {"sandbox.gvisor": "true"}

    settings = rendered_settings(docs)
    assert settings.telemetry.otlp_endpoint == "http://otel-collector.observability:4318/v1/traces"


def test_the_policy_files_compile() -> None:
    from symbi_policy.compiler import compile_sources

    for name, text in POLICY_FILES.items():
        assert compile_sources(text, name), name


def test_the_service_monitor_scrapes_every_service() -> None:
    docs = manifests(PRODUCTION)
    (monitor,) = of_kind(docs, "ServiceMonitor")
    model = ServiceMonitor.model_validate(monitor)  # the prometheus-operator CRD's types and patterns
    assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == monitor  # and no unknown field
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["symbi"]}
    wanted = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["endpoints"]
    selected = {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]
        for doc in of_kind(docs, "Service")
        if wanted.items() <= doc["metadata"]["labels"].items()
    }
    assert selected == set(catalog.SERVICE_NAMES)
    for doc in of_kind(docs, "Service"):
        if doc["metadata"]["labels"]["app.kubernetes.io/component"] in selected:
            assert endpoint["port"] in {port["name"] for port in doc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert not of_kind(manifests({}), "ServiceMonitor")


def test_defaults_make_an_api_admin_key_and_say_what_is_missing() -> None:
    out = render({})
    docs = [doc for path, text in out.items() if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]
    (secret,) = of_kind(docs, "Secret")
    key = base64.b64decode(secret["data"]["admin-key"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", key)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    api_env = env_of(workloads(docs)["api"])
    assert api_env["SYMBI_API_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    notes = out["symbi/templates/NOTES.txt"]
    assert "NATS runs without authorization" in notes
    assert "No policies are loaded" in notes
    assert of_kind(docs, "RuntimeClass")[0]["handler"] == "runsc"


def rendered_settings(docs: list[dict[str, Any]]) -> Settings:
    (config_map,) = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"] == "demo-symbi-config"]
    return Settings.model_validate(tomllib.loads(config_map["data"]["symbi.toml"]))


def test_rendered_config_file_is_valid_symbi_configuration(tmp_path: Path) -> None:
    (config_map,) = [doc for doc in manifests({}) if doc["kind"] == "ConfigMap"]
    path = tmp_path / "symbi.toml"
    path.write_text(config_map["data"]["symbi.toml"])
    settings = load_settings(path, environ={})
    assert settings.runtime.mode == "production"
    assert settings.mcp.tool_verification == "strict"


def test_the_values_schema_knows_every_config_section() -> None:
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["config"]["properties"]) == set(Settings.model_fields)


def test_scaled_services_get_disruption_budgets() -> None:
    budgets = {
        doc["metadata"]["name"] for doc in manifests(VALUE_SETS["scaled"]) if doc["kind"] == "PodDisruptionBudget"
    }
    assert "demo-symbi-policy" in budgets
    assert "demo-symbi-scheduler" not in budgets  # one replica: a budget would block node drains


@pytest.mark.parametrize("value_set", ["defaults", "production", "external-dependencies"])
def test_chart_lints_clean(value_set: str) -> None:
    report = helm.lint(str(CHART), VALUE_SETS[value_set], strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"services": {"policy": {"enabled": True, "kind": "Deployment", "replicas": "three"}}}, "replicas"),
        ({"services": {"policy": {"enabled": True, "kind": "CronJob"}}}, "kind"),
        ({"nats": {"bundled": False, "url": ""}}, "nats.url is required"),
        ({"nats": {"bundled": True, "url": "", "auth": {"enabled": True}}}, "nats.auth.existingSecret is required"),
        ({"ports": {"metrics": 70000, "policyGrpc": 50051, "api": 8080}}, "metrics"),
        ({"policies": {"../escape.yaml": "id: x"}}, "../escape.yaml"),
        ({"monitoring": {"serviceMonitor": {"enabled": True, "interval": "soon"}}}, "interval"),
        ({"sandbox": {"runtimeClass": {"create": True, "handler": "Not A Handler"}}}, "handler"),
        ({"unknownKey": True}, "unknownKey"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(values: dict[str, Any], problem: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(problem)):
        render(values)
