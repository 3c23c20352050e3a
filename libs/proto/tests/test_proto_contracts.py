"""The generated protobuf package matches proto/ and keeps the contracts services rely on.

- regeneration with the pinned tools changes nothing (``scripts/gen_proto.py --check``);
- the generator refuses wrong tool versions and leaves checked-in code alone on failure;
- every generated module imports, with imports rewritten to ``symbi_proto.v1``;
- the key messages round-trip, the shapes shared code is written against are exact,
  every enum reserves 0 for ``*_UNSPECIFIED``, and ``PolicyService`` works over a real
  gRPC channel.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from google.protobuf import descriptor, struct_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

import symbi_proto.v1
from symbi_proto.v1 import (
    agent_pb2,
    audit_pb2,
    common_pb2,
    context_pb2,
    health_pb2,
    message_pb2,
    policy_pb2,
    policy_pb2_grpc,
    sandbox_pb2,
    task_pb2,
)

ROOT = Path(__file__).resolve().parents[3]
GEN_SCRIPT = ROOT / "scripts" / "gen_proto.py"
PROTO_DIR = ROOT / "proto" / "symbi" / "v1"
GENERATED_DIR = Path(symbi_proto.v1.__file__).parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")

POLICY_METHODS = {
    "Evaluate": ("EvaluateRequest", "PolicyDecision"),
    "EvaluateBatch": ("EvaluateBatchRequest", "EvaluateBatchResponse"),
    "RegisterPolicy": ("RegisterPolicyRequest", "RegisterPolicyResponse"),
    "ListPolicies": ("ListPoliciesRequest", "ListPoliciesResponse"),
    "GetPolicy": ("GetPolicyRequest", "GetPolicyResponse"),
    "DeletePolicy": ("DeletePolicyRequest", "DeletePolicyResponse"),
    "Explain": ("ExplainRequest", "ExplainResponse"),
    "DryRun": ("DryRunRequest", "DryRunResponse"),
}


def proto_stems() -> list[str]:
    return sorted(path.stem for path in PROTO_DIR.glob("*.proto"))


def generated_files() -> list[Path]:
    return sorted(path for path in GENERATED_DIR.iterdir() if path.name.endswith(GENERATED_SUFFIXES))


def generated_modules() -> list[str]:
    return sorted(f"symbi_proto.v1.{path.stem}" for path in generated_files() if path.suffix == ".py")


def ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=123_000_000)


def round_trip(message: Message) -> Message:
    """Serialize and parse into a fresh instance of the same type."""
    data = message.SerializeToString(deterministic=True)
    parsed = type(message)()
    parsed.ParseFromString(data)
    return parsed


# --- generation ---------------------------------------------------------------------


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--check"], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"generated code is stale:\n{result.stdout}{result.stderr}"


def test_every_proto_file_has_all_four_generated_files() -> None:
    stems = proto_stems()
    assert stems, f"no .proto files in {PROTO_DIR}"
    expected = sorted(stem + suffix for stem in stems for suffix in GENERATED_SUFFIXES)
    assert [path.name for path in generated_files()] == expected


def test_no_generated_file_imports_the_unrewritten_package() -> None:
    offenders = [
        path.name
        for path in generated_files()
        if "from symbi.v1 import" in path.read_text(encoding="utf-8")
        or "import symbi.v1" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


@pytest.mark.parametrize("module_name", generated_modules())
def test_every_generated_module_imports(module_name: str) -> None:
    module = importlib.import_module(module_name)
    if module_name.endswith("_pb2"):
        assert module.DESCRIPTOR.package == "symbi.v1"
        for name in module.DESCRIPTOR.message_types_by_name:
            # Message classes name their real module, so pickling and repr work.
            assert getattr(module, name).__module__ == module_name


@pytest.fixture
def gen_proto() -> ModuleType:
    """scripts/gen_proto.py loaded as a module, so tests can point it at scratch trees."""
    spec = importlib.util.spec_from_file_location("gen_proto_under_test", GEN_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scratch_tree(gen_proto: ModuleType, root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the generator at proto/ and output directories under root; returns the output directory."""
    (root / "proto" / "symbi" / "v1").mkdir(parents=True)
    output = root / "out"
    output.mkdir()
    monkeypatch.setattr(gen_proto, "ROOT", root)
    monkeypatch.setattr(gen_proto, "PROTO_ROOT", root / "proto")
    monkeypatch.setattr(gen_proto, "OUTPUT_DIR", output)
    return output


def test_generator_refuses_other_tool_versions(
    gen_proto: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gen_proto, "PINS", {"grpcio-tools": "0.0.1", "mypy-protobuf": "5.1.0"})
    assert gen_proto.main(["--check"]) == 2
    assert "grpcio-tools==0.0.1 is required" in capsys.readouterr().err


def test_failed_generation_leaves_checked_in_code_untouched(
    gen_proto: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    output = scratch_tree(gen_proto, tmp_path, monkeypatch)
    broken = tmp_path / "proto" / "symbi" / "v1" / "broken.proto"
    broken.write_text('syntax = "proto3";\npackage symbi.v1;\nmessage Broken { string x = ; }\n')
    previous = output / "broken_pb2.py"
    previous.write_text("# previous generation\n")
    assert gen_proto.main([]) == 2
    assert "broken.proto" in capsys.readouterr().err
    assert [path.name for path in output.iterdir()] == ["broken_pb2.py"]
    assert previous.read_text() == "# previous generation\n"


def test_generate_rewrites_imports_removes_stale_files_and_check_detects_drift(
    gen_proto: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    output = scratch_tree(gen_proto, tmp_path, monkeypatch)
    package = tmp_path / "proto" / "symbi" / "v1"
    (package / "base.proto").write_text('syntax = "proto3";\npackage symbi.v1;\nmessage Base { string id = 1; }\n')
    (package / "user.proto").write_text(
        'syntax = "proto3";\npackage symbi.v1;\nimport "symbi/v1/base.proto";\n'
        "message User { Base base = 1; }\nservice Users { rpc Get(Base) returns (User); }\n"
    )
    (output / "__init__.py").write_text('"""hand-written"""\n')
    (output / "gone_pb2.py").write_text("# from a deleted proto\n")

    assert gen_proto.main([]) == 0
    names = sorted(path.name for path in output.iterdir())
    assert names == sorted(["__init__.py", *gen_proto.expected_files(["symbi/v1/base.proto", "symbi/v1/user.proto"])])
    assert (output / "__init__.py").read_text() == '"""hand-written"""\n'
    for name in ("user_pb2.py", "user_pb2.pyi", "user_pb2_grpc.py", "user_pb2_grpc.pyi"):
        text = (output / name).read_text()
        assert "from symbi_proto.v1 import" in text, name
        assert "from symbi.v1 import" not in text, name
    assert "'symbi_proto.v1.user_pb2'" in (output / "user_pb2.py").read_text()

    assert gen_proto.main(["--check"]) == 0
    (output / "base_pb2.pyi").write_text("# edited by hand\n")
    (output / "user_pb2_grpc.py").unlink()
    (output / "extra_pb2.py").write_text("")
    capsys.readouterr()
    assert gen_proto.main(["--check"]) == 1
    report = capsys.readouterr().err
    assert "differs: base_pb2.pyi" in report
    assert "missing: user_pb2_grpc.py" in report
    assert "extra:   extra_pb2.py" in report


# --- contracts shared code is written against ---------------------------------------


def field_numbers(message: type[Message]) -> dict[str, int]:
    return {field.name: field.number for field in message.DESCRIPTOR.fields}


def test_fixed_shapes_used_by_shared_code() -> None:
    assert field_numbers(health_pb2.ComponentHealth) == {"name": 1, "status": 2, "detail": 3}
    assert field_numbers(health_pb2.RecentError) == {"time": 1, "component": 2, "message": 3}
    assert field_numbers(health_pb2.HealthRequest) == {}
    assert field_numbers(health_pb2.HealthStatus) == {
        "service": 1,
        "instance_id": 2,
        "status": 3,
        "components": 4,
        "resources": 5,
        "recent_errors": 6,
        "time": 7,
        "version": 8,
        "endpoints": 9,
        "uptime_seconds": 10,
    }
    assert field_numbers(common_pb2.ResourceUsage) == {
        "cpu_percent": 1,
        "memory_rss_bytes": 2,
        "threads": 3,
        "open_fds": 4,
    }
    assert field_numbers(common_pb2.ErrorDetail) == {"code": 1, "message": 2, "metadata": 3}
    assert dict(health_pb2.ServingStatus.items()) == {
        "SERVING_STATUS_UNSPECIFIED": 0,
        "SERVING_STATUS_SERVING": 1,
        "SERVING_STATUS_DEGRADED": 2,
        "SERVING_STATUS_NOT_SERVING": 3,
    }


def all_enums() -> Iterator[descriptor.EnumDescriptor]:
    def nested(message: descriptor.Descriptor) -> Iterator[descriptor.EnumDescriptor]:
        yield from message.enum_types
        for child in message.nested_types:
            yield from nested(child)

    for module_name in generated_modules():
        if module_name.endswith("_pb2"):
            file = importlib.import_module(module_name).DESCRIPTOR
            yield from file.enum_types_by_name.values()
            for message in file.message_types_by_name.values():
                yield from nested(message)


def enum_prefix(enum: descriptor.EnumDescriptor) -> str:
    """ServingStatus -> SERVING_STATUS_: enum values live in the package scope, so each carries its enum's name."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def test_every_enum_reserves_zero_as_unspecified_and_prefixes_its_values() -> None:
    enums = list(all_enums())
    assert len(enums) > 20
    bad_zero = [enum.full_name for enum in enums if enum.values_by_number[0].name != enum_prefix(enum) + "UNSPECIFIED"]
    assert bad_zero == []
    unprefixed = [value.name for enum in enums for value in enum.values if not value.name.startswith(enum_prefix(enum))]
    assert unprefixed == []


def non_zero_names(enum: descriptor.EnumDescriptor, prefix: str) -> set[str]:
    return {value.name.removeprefix(prefix) for value in enum.values if value.number != 0}


def test_enums_name_the_designed_values() -> None:
    assert {"AGENT_CREATE", "MESSAGE_SEND", "RESOURCE_ALLOCATE", "TOOL_INVOKE", "DATA_ACCESS"} <= non_zero_names(
        policy_pb2.ActionType.DESCRIPTOR, "ACTION_TYPE_"
    )
    assert non_zero_names(agent_pb2.AgentState.DESCRIPTOR, "AGENT_STATE_") == {
        "INITIALIZING",
        "READY",
        "RUNNING",
        "SUSPENDED",
        "FAILED",
        "TERMINATED",
    }
    assert non_zero_names(context_pb2.MemoryKind.DESCRIPTOR, "MEMORY_KIND_") == {
        "SHORT_TERM",
        "LONG_TERM",
        "WORKING",
        "SHARED_KNOWLEDGE",
    }
    assert non_zero_names(sandbox_pb2.SandboxTier.DESCRIPTOR, "SANDBOX_TIER_") == {"TIER1_DOCKER", "TIER2_GVISOR"}
    assert len(non_zero_names(task_pb2.TaskPriority.DESCRIPTOR, "TASK_PRIORITY_")) >= 4


# --- round trips ----------------------------------------------------------------------


def unset_fields(message: Message) -> list[str]:
    """Top-level fields of message still at their default (a oneof counts once, by its group)."""
    unset = []
    for field in message.DESCRIPTOR.fields:
        if field.containing_oneof is not None:
            continue
        value = getattr(message, field.name)
        if field.is_repeated:
            empty = len(value) == 0
        elif field.message_type is not None:
            empty = not message.HasField(field.name)
        else:
            empty = value == field.default_value
        if empty:
            unset.append(field.name)
    unset += [oneof.name for oneof in message.DESCRIPTOR.oneofs if message.WhichOneof(oneof.name) is None]
    return unset


def health_status() -> health_pb2.HealthStatus:
    return health_pb2.HealthStatus(
        service="policy",
        instance_id="policy-host-1-abc123",
        status=health_pb2.SERVING_STATUS_DEGRADED,
        components=[
            health_pb2.ComponentHealth(name="nats", status=health_pb2.SERVING_STATUS_SERVING, detail="connected"),
            health_pb2.ComponentHealth(name="redis", status=health_pb2.SERVING_STATUS_NOT_SERVING, detail="refused"),
        ],
        resources=common_pb2.ResourceUsage(cpu_percent=12.5, memory_rss_bytes=50 << 20, threads=9, open_fds=31),
        recent_errors=[health_pb2.RecentError(time=ts(1_700_000_000), component="redis", message="refused")],
        time=ts(1_700_000_001),
        version="0.1.0",
        endpoints={"metrics": "http://127.0.0.1:9101/metrics", "grpc": "127.0.0.1:50051"},
        uptime_seconds=42.5,
    )


def audit_event() -> audit_pb2.AuditEvent:
    details = struct_pb2.Struct()
    details.update({"decision": "deny", "rule": "no-phi-egress", "conditions": ["audit"], "bytes": 1024})
    return audit_pb2.AuditEvent(
        event_id="01890a5d-ac96-774b-bcce-b302099a8057",
        timestamp=ts(1_700_000_002),
        agent_id="01890a5d-ac96-774b-bcce-b302099a8058",
        event_type="policy.decision",
        details=details,
        chain_hash=bytes(range(32)),
        signature=bytes(range(64)),
        key_id="audit-key-1",
        sequence=41,
        source="policy-host-1-abc123",
        tenant="acme",
        correlation_id="01890a5d-ac96-774b-bcce-b302099a8059",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        outcome=audit_pb2.AUDIT_OUTCOME_DENIED,
        data_labels=["phi"],
    )


def secure_message() -> message_pb2.SecureMessage:
    header = message_pb2.MessageHeader(
        message_id="01890a5d-ac96-774b-bcce-b302099a8060",
        sender="agent-a",
        recipient="agent-b",
        topic="research.results",
        kind=message_pb2.MESSAGE_KIND_DIRECT,
        timestamp=ts(1_700_000_003),
        nonce=b"\x01" * 12,
        key_id="pair:agent-a:agent-b:3",
        signing_key_id="agent-a-ed25519-1",
        content_type="application/json",
        correlation_id="conv-7",
        expires_at=ts(1_700_000_063),
        envelope_version=1,
    )
    return message_pb2.SecureMessage(header=header, ciphertext=b"\x9a" * 48, signature=b"\x55" * 64)


def task() -> task_pb2.Task:
    arguments = struct_pb2.Struct()
    arguments.update({"query": "zero trust", "max_results": 5})
    return task_pb2.Task(
        task_id="01890a5d-ac96-774b-bcce-b302099a8061",
        agent_id="01890a5d-ac96-774b-bcce-b302099a8058",
        tenant="acme",
        priority=task_pb2.TASK_PRIORITY_HIGH,
        limits=common_pb2.ResourceLimits(
            memory_mb=512,
            cpu_cores=0.5,
            disk_io_mbps=20,
            network_io_mbps=5,
            execution_timeout=Duration(seconds=30),
            max_pids=128,
            max_output_bytes=1 << 20,
        ),
        spec=task_pb2.TaskSpec(
            image="symbi/sandbox-base:bookworm",
            entrypoint=["/usr/bin/python3"],
            command=["/symbi/script"],
            env={"LANG": "C.UTF-8"},
            working_dir="/tmp",
            script="print('hello')",
        ),
        tier=sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR,
        risk=sandbox_pb2.RiskAssessment(
            score=0.62,
            score_tier=sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR,
            chosen_tier=sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR,
            reason="untrusted code",
        ),
        network_access=False,
        arguments=arguments,
        submitted_at=ts(1_700_000_004),
        deadline=ts(1_700_000_604),
        preemptible=True,
        attempt=1,
        labels={"scenario": "research"},
        decision_id="01890a5d-ac96-774b-bcce-b302099a8062",
    )


SAMPLES = {"HealthStatus": health_status, "AuditEvent": audit_event, "SecureMessage": secure_message, "Task": task}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_populated_message_round_trips(name: str) -> None:
    original = SAMPLES[name]()
    allowed_defaults = {"Task": ["network_access"]}.get(name, [])
    assert unset_fields(original) == allowed_defaults, "sample must populate every field"
    parsed = round_trip(original)
    assert parsed == original
    assert parsed.SerializeToString(deterministic=True) == original.SerializeToString(deterministic=True)


def test_round_trip_keeps_values_services_read() -> None:
    status = round_trip(health_status())
    assert isinstance(status, health_pb2.HealthStatus)
    assert status.components[1].status == health_pb2.SERVING_STATUS_NOT_SERVING
    assert status.endpoints["metrics"] == "http://127.0.0.1:9101/metrics"
    event = round_trip(audit_event())
    assert isinstance(event, audit_pb2.AuditEvent)
    assert event.details["rule"] == "no-phi-egress"
    assert event.timestamp.ToNanoseconds() == 1_700_000_002_123_000_000
    envelope = round_trip(secure_message())
    assert isinstance(envelope, message_pb2.SecureMessage)
    assert envelope.header.HasField("expires_at")
    assert len(envelope.header.nonce) == 12
    parsed_task = round_trip(task())
    assert isinstance(parsed_task, task_pb2.Task)
    assert parsed_task.limits.execution_timeout.ToSeconds() == 30
    assert parsed_task.limits.cpu_cores == 0.5


def every_condition() -> list[policy_pb2.Condition]:
    return [
        policy_pb2.Condition(
            require_sandbox_tier=policy_pb2.RequireSandboxTier(minimum_tier=sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR),
            rule="sandbox/untrusted",
        ),
        policy_pb2.Condition(redact_fields=policy_pb2.RedactFields(paths=["arguments.password"], replacement="***")),
        policy_pb2.Condition(rate_limit=policy_pb2.RateLimit(key="agent:a", limit=10, period=Duration(seconds=1))),
        policy_pb2.Condition(require_audit=policy_pb2.RequireAudit(record_inputs=True, category="hipaa")),
        policy_pb2.Condition(
            require_human_approval=policy_pb2.RequireHumanApproval(approver_group="sec", timeout=Duration(seconds=60))
        ),
        policy_pb2.Condition(max_tokens=policy_pb2.MaxTokens(limit=4096)),
        policy_pb2.Condition(max_bytes=policy_pb2.MaxBytes(limit=1 << 20)),
        policy_pb2.Condition(
            limit_resources=policy_pb2.LimitResources(limits=common_pb2.ResourceLimits(memory_mb=256))
        ),
    ]


def decision(variant: str) -> policy_pb2.PolicyDecision:
    outcome: dict[str, Message] = {
        "allow": policy_pb2.Allow(),
        "deny": policy_pb2.Deny(reason="phi may not leave the tenant", kind=policy_pb2.DENY_KIND_RULE),
        "allow_with_conditions": policy_pb2.AllowWithConditions(conditions=every_condition()),
    }
    result = policy_pb2.PolicyDecision(
        policy_id="data-flow",
        policy_version=3,
        matched_rule="no-phi-egress",
        policy_set_version=17,
        decision_id="01890a5d-ac96-774b-bcce-b302099a8063",
        time=ts(1_700_000_005),
        cache_ttl=Duration(seconds=5),
    )
    getattr(result, variant).CopyFrom(outcome[variant])
    return result


@pytest.mark.parametrize("variant", ["allow", "deny", "allow_with_conditions"])
def test_policy_decision_round_trips_each_variant(variant: str) -> None:
    original = decision(variant)
    assert unset_fields(original) == []
    parsed = round_trip(original)
    assert isinstance(parsed, policy_pb2.PolicyDecision)
    assert parsed == original
    assert parsed.WhichOneof("outcome") == variant
    assert (parsed.policy_id, parsed.policy_version, parsed.matched_rule) == ("data-flow", 3, "no-phi-egress")


def test_every_condition_kind_round_trips() -> None:
    kinds = {field.name for field in policy_pb2.Condition.DESCRIPTOR.oneofs_by_name["kind"].fields}
    parsed = round_trip(decision("allow_with_conditions"))
    assert isinstance(parsed, policy_pb2.PolicyDecision)
    assert {condition.WhichOneof("kind") for condition in parsed.allow_with_conditions.conditions} == kinds


# --- PolicyService over gRPC ----------------------------------------------------------


def test_policy_service_descriptor_lists_every_method() -> None:
    service = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"]
    assert service.full_name == "symbi.v1.PolicyService"
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert methods == POLICY_METHODS


def test_policy_service_stub_and_servicer_have_every_method() -> None:
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        for method in POLICY_METHODS:
            assert callable(getattr(stub, method)), method
    for method in POLICY_METHODS:
        assert callable(getattr(policy_pb2_grpc.PolicyServiceServicer, method)), method
    assert callable(policy_pb2_grpc.add_PolicyServiceServicer_to_server)


class DenyEverything(policy_pb2_grpc.PolicyServiceServicer):
    """Implements only Evaluate, so the others answer UNIMPLEMENTED."""

    def Evaluate(self, request: policy_pb2.EvaluateRequest, context: grpc.ServicerContext) -> policy_pb2.PolicyDecision:
        reason = f"{request.context.subject.id} may not {request.action.operation}"
        return policy_pb2.PolicyDecision(deny=policy_pb2.Deny(reason=reason, kind=policy_pb2.DENY_KIND_DEFAULT))


@pytest.fixture
def policy_channel() -> Iterator[grpc.Channel]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    # The stubs mark every method abstract; at run time the rest answer UNIMPLEMENTED, which is tested.
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(DenyEverything(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        server.stop(grace=None)


def test_policy_service_answers_over_a_real_channel(policy_channel: grpc.Channel) -> None:
    stub = policy_pb2_grpc.PolicyServiceStub(policy_channel)
    request = policy_pb2.EvaluateRequest(
        context=policy_pb2.PolicyContext(subject=policy_pb2.Subject(kind=policy_pb2.SUBJECT_KIND_AGENT, id="agent-a")),
        action=policy_pb2.Action(type=policy_pb2.ACTION_TYPE_TOOL_INVOKE, operation="call"),
    )
    answer = stub.Evaluate(request, timeout=5)
    assert answer.WhichOneof("outcome") == "deny"
    assert answer.deny.reason == "agent-a may not call"
    with pytest.raises(grpc.RpcError) as failure:
        stub.Explain(policy_pb2.ExplainRequest(request=request), timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
