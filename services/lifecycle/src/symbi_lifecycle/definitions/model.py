"""From a ``RawDefinition`` to the one ``AgentDefinition`` model, checking everything on the way.

Every problem becomes a ``ValidationIssue`` with the file, line and column of the
value at fault; a definition with any error creates nothing. What is checked:
names, versions and metadata keys; parameter names; capabilities against the
known catalogue; every inline policy statement (parsed, its condition compiled, and
the whole generated policy compiled by the policy engine); ``with`` options (known
names, types, units, plausible limits); the task (image, command, environment).

``with`` options:

==================  ===========================================================
sandbox             ``Tier1`` or ``Tier2`` (policy and risk may raise it)
timeout             a duration: the task is killed when it elapses
memory              a size; MB/GB/MiB/GiB all count in MiB here, as Docker does
cpu                 cores, fractional allowed
disk_io, network_io MB/s
pids                process limit (gVisor needs at least 96)
output              a size: captured output beyond it is cut
network             true/false: ask for network access (policy decides)
data_sensitivity    public, internal, confidential, restricted
code_trust          trusted, reviewed, untrusted
filesystem          none, read_only, read_write
inputs              a list of names (data sources, tools)
priority            low, normal, high, critical
==================  ===========================================================
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from symbi_common.units import parse_duration, parse_size
from symbi_lifecycle.definitions.raw import Loc, RawDefinition, Val, issue
from symbi_lifecycle.definitions.statements import PLACEHOLDER_AGENT, StatementError, parse_statement, policy_document
from symbi_policy.compiler import compile_sources
from symbi_policy.document import DocumentError
from symbi_proto.v1 import agent_pb2, common_pb2, sandbox_pb2, task_pb2

DEFAULT_IMAGE = "symbi/base:bookworm"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
VERSION = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
CAPABILITIES = frozenset({
    "web_search", "read_documents", "write_documents", "summarize", "analyze_data", "send_messages",
    "receive_messages", "publish_topics", "call_tools", "read_memory", "write_memory", "shared_knowledge",
    "execute_code", "trusted_code", "network", "read_files", "write_files", "security_scan", "generate_reports",
    "email", "human_approval",
})  # fmt: skip
METADATA_KEYS = ("name", "version", "author", "description", "labels")
TASK_KEYS = ("image", "entrypoint", "command", "env", "working_dir", "script")
FIELD_KEYS = ("tenant",)
TIERS = {"Tier1": sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER, "Tier2": sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR}
SENSITIVITY = {
    "public": common_pb2.DATA_SENSITIVITY_PUBLIC,
    "internal": common_pb2.DATA_SENSITIVITY_INTERNAL,
    "confidential": common_pb2.DATA_SENSITIVITY_CONFIDENTIAL,
    "restricted": common_pb2.DATA_SENSITIVITY_RESTRICTED,
}
TRUST = {
    "trusted": sandbox_pb2.CODE_TRUST_TRUSTED,
    "reviewed": sandbox_pb2.CODE_TRUST_REVIEWED,
    "untrusted": sandbox_pb2.CODE_TRUST_UNTRUSTED,
}
FILESYSTEM = {
    "none": sandbox_pb2.FILESYSTEM_ACCESS_NONE,
    "read_only": sandbox_pb2.FILESYSTEM_ACCESS_READ_ONLY,
    "read_write": sandbox_pb2.FILESYSTEM_ACCESS_READ_WRITE,
}
PRIORITY = {
    "low": task_pb2.TASK_PRIORITY_LOW,
    "normal": task_pb2.TASK_PRIORITY_NORMAL,
    "high": task_pb2.TASK_PRIORITY_HIGH,
    "critical": task_pb2.TASK_PRIORITY_CRITICAL,
}
MIN_GVISOR_PIDS = 96


@dataclass
class Built:
    definition: agent_pb2.AgentDefinition
    issues: list[common_pb2.ValidationIssue] = field(default_factory=list)
    rules: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    """The inline policy blocks as policy rules (``statements.policy_document`` renders them)."""

    @property
    def ok(self) -> bool:
        return not any(i.severity == common_pb2.ISSUE_SEVERITY_ERROR for i in self.issues)


class _Checker:
    def __init__(self, raw: RawDefinition, capabilities: frozenset[str]) -> None:
        self.raw = raw
        self.capabilities = capabilities
        self.issues: list[common_pb2.ValidationIssue] = []

    def error(self, code: str, message: str, loc: Loc) -> None:
        self.issues.append(issue(code, message, loc))

    def ok(self) -> bool:
        return not any(i.severity == common_pb2.ISSUE_SEVERITY_ERROR for i in self.issues)

    def string(self, val: Val, what: str) -> str | None:
        if not isinstance(val.value, str):
            self.error("wrong_type", f"{what} must be a string", val.loc)
            return None
        return str(val.value)

    def strings(self, val: Val, what: str) -> list[str]:
        if not isinstance(val.value, list) or not all(isinstance(item.value, str) for item in val.value):
            self.error("wrong_type", f"{what} must be a list of strings", val.loc)
            return []
        return [str(item.value) for item in val.value]

    def choice(self, val: Val, what: str, options: Mapping[str, Any]) -> Any:
        text = val.value if isinstance(val.value, str) else ""
        if text not in options:
            self.error("bad_value", f"{what} is one of {', '.join(options)}, not {val.value!r}", val.loc)
            return 0  # unspecified; the error stops the definition anyway
        return options[text]

    def number(self, val: Val, what: str, low: float, high: float) -> float | None:
        if isinstance(val.value, bool) or not isinstance(val.value, (int, float)):
            self.error("wrong_type", f"{what} must be a number", val.loc)
            return None
        if not low <= float(val.value) <= high:
            self.error("out_of_range", f"{what} must be between {low:g} and {high:g}", val.loc)
            return None
        return float(val.value)

    def units(self, val: Val, what: str, parse: Callable[[object], float]) -> float | None:
        try:
            return float(parse(val.value))
        except ValueError as exc:
            self.error("bad_value", f"{what}: {exc}", val.loc)
            return None


def build(raw: RawDefinition, source: agent_pb2.DefinitionSource, extra_capabilities: Iterable[str] = ()) -> Built:
    """The model of ``raw``, with every problem found (see the module docstring)."""
    check = _Checker(raw, CAPABILITIES | frozenset(extra_capabilities))
    definition = agent_pb2.AgentDefinition(source=source)
    definition.options.limits.SetInParent()  # always present, so equal definitions compare equal
    built = Built(definition, check.issues)
    _metadata(check, definition)
    _signature(check, definition)
    _capabilities(check, definition)
    _options(check, definition.options)
    _task(check, definition.task)
    for key, val in raw.fields.items():
        if key == "tenant":
            definition.tenant = check.string(val, "tenant") or ""
        else:
            where = raw.key_loc("fields", key, val.loc)
            check.error("unknown_field", f"unknown entry {key!r} (known: {', '.join(FIELD_KEYS)})", where)
    built.rules = _policies(check, definition)
    return built


def _metadata(check: _Checker, definition: agent_pb2.AgentDefinition) -> None:
    raw = check.raw
    meta = definition.metadata
    if raw.name is None:
        check.error("missing_name", "the definition names no agent", raw.loc)
        return
    if not NAME.match(str(raw.name.value)):
        check.error("bad_name", "an agent name is lower case letters, digits and '_', starting with a letter",
                    raw.name.loc)  # fmt: skip
    meta.name = str(raw.name.value)
    for key, val in raw.metadata.items():
        if key not in METADATA_KEYS:
            where = raw.key_loc("metadata", key, val.loc)
            check.error("unknown_field", f"unknown metadata {key!r} (known: {', '.join(METADATA_KEYS)})", where)
        elif key == "labels":
            if not isinstance(val.value, dict):
                check.error("wrong_type", "labels must be a map of strings", val.loc)
                continue
            for label, item in val.value.items():
                meta.labels[str(label)] = check.string(item, f"label {label}") or ""
        else:
            text = check.string(val, key)
            if text is None:
                continue
            if key == "name" and text != meta.name:
                check.error(
                    "name_mismatch", f"metadata name {text!r} differs from the agent name {meta.name!r}", val.loc
                )
            elif key == "version" and not VERSION.match(text):
                check.error("bad_version", f"version {text!r} is not semantic (e.g. 1.2.0)", val.loc)
            setattr(meta, key, text)


def _signature(check: _Checker, definition: agent_pb2.AgentDefinition) -> None:
    seen: set[str] = set()
    for param in check.raw.params:
        name = str(param.name.value)
        if name in seen:
            check.error("duplicate", f"parameter {name!r} is declared twice", param.name.loc)
        seen.add(name)
        out = definition.parameters.add(name=name, type=str(param.type.value), optional=param.optional)
        if param.default is not None:
            out.default_json = json.dumps(_plain(param.default.value), sort_keys=True)
    if check.raw.returns is not None:
        definition.return_type = str(check.raw.returns.value)


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v.value) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v.value) for k, v in value.items()}
    return value if value is None or isinstance(value, (bool, int, float)) else str(value)


def _capabilities(check: _Checker, definition: agent_pb2.AgentDefinition) -> None:
    seen: set[str] = set()
    for val in check.raw.capabilities:
        name = check.string(val, "a capability")
        if name is None:
            continue
        if name in seen:
            check.error("duplicate", f"capability {name!r} is listed twice", val.loc)
        elif name not in check.capabilities:
            known = ", ".join(sorted(check.capabilities))
            check.error("unknown_capability", f"unknown capability {name!r} (known: {known})", val.loc)
        seen.add(name)
        definition.capabilities.append(name)


def _options(check: _Checker, options: agent_pb2.AgentOptions) -> None:
    limits = options.limits
    for key, val in check.raw.options.items():
        if key == "sandbox":
            options.sandbox_tier = check.choice(val, "sandbox", TIERS)
        elif key == "timeout":
            seconds = check.units(val, "timeout", parse_duration)
            if seconds is not None and not 0 < seconds <= 24 * 3600:
                check.error("out_of_range", "timeout must be between 0 and 24h", val.loc)
            elif seconds is not None:
                limits.execution_timeout.FromNanoseconds(round(seconds * 1e9))
        elif key == "memory":
            size = check.units(val, "memory", _mib)
            if size is not None and not 4 <= size <= 1024 * 1024:
                check.error("out_of_range", "memory must be between 4 MiB and 1 TiB", val.loc)
            elif size is not None:
                limits.memory_mb = int(size)
        elif key == "cpu":
            limits.cpu_cores = check.number(val, "cpu", 0.01, 256) or 0.0
        elif key in ("disk_io", "network_io"):
            setattr(limits, f"{key}_mbps", int(check.number(val, key, 1, 100_000) or 0))
        elif key == "pids":
            limits.max_pids = int(check.number(val, "pids", 1, 1_000_000) or 0)
        elif key == "output":
            size = check.units(val, "output", parse_size)
            limits.max_output_bytes = int(size or 0)
        elif key == "network":
            if not isinstance(val.value, bool):
                check.error("wrong_type", "network is true or false", val.loc)
            options.network_access = bool(val.value is True)
        elif key == "data_sensitivity":
            options.data_sensitivity = check.choice(val, key, SENSITIVITY)
        elif key == "code_trust":
            options.code_trust = check.choice(val, key, TRUST)
        elif key == "filesystem":
            options.filesystem_access = check.choice(val, key, FILESYSTEM)
        elif key == "inputs":
            options.inputs.extend(check.strings(val, "inputs"))
        elif key == "priority":
            options.priority = check.choice(val, key, PRIORITY)
        else:
            known = "sandbox, timeout, memory, cpu, disk_io, network_io, pids, output, network, " \
                "data_sensitivity, code_trust, filesystem, inputs, priority"  # fmt: skip
            check.error("unknown_option", f"unknown option {key!r} (known: {known})", val.loc)
    tier2 = options.sandbox_tier == sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR
    if tier2 and limits.max_pids and limits.max_pids < MIN_GVISOR_PIDS:
        check.error(
            "out_of_range", f"gVisor (Tier2) needs at least {MIN_GVISOR_PIDS} pids", check.raw.options["pids"].loc
        )


def _mib(value: object) -> float:
    """Memory in MiB: "512MB", "512MiB", "512M" and 512 all mean 512 MiB; "1GB" means 1024."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?", text, re.I)
    if not match:
        raise ValueError(f"{value!r} is not a memory size (e.g. 512MB, 2GB)")
    number, unit = float(match.group(1)), match.group(2).upper()
    return number * {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]


def _task(check: _Checker, task: task_pb2.TaskSpec) -> None:
    for key, val in check.raw.task.items():
        if key in ("image", "working_dir", "script"):
            setattr(task, key, check.string(val, key) or "")
        elif key in ("entrypoint", "command"):
            getattr(task, key).extend(check.strings(val, key))
        elif key == "env":
            if not isinstance(val.value, dict):
                check.error("wrong_type", "env must be a map of strings", val.loc)
                continue
            for name, item in val.value.items():
                task.env[str(name)] = check.string(item, f"env {name}") or ""
        else:
            where = check.raw.key_loc("task", key, val.loc)
            check.error("unknown_field", f"unknown task entry {key!r} (known: {', '.join(TASK_KEYS)})", where)
    if not task.image:
        task.image = DEFAULT_IMAGE


def _policies(check: _Checker, definition: agent_pb2.AgentDefinition) -> list[tuple[str, list[dict[str, Any]]]]:
    blocks: list[tuple[str, list[dict[str, Any]]]] = []
    seen: set[str] = set()
    for raw in check.raw.policies:
        name = str(raw.name.value)
        if name in seen:
            check.error("duplicate", f"policy block {name!r} is declared twice", raw.name.loc)
        seen.add(name)
        inline = definition.policies.add(name=name, location=raw.name.loc.message())
        rules = []
        for index, (kind, text) in enumerate(raw.statements, start=1):
            inline.statements.add(
                kind=getattr(agent_pb2, f"POLICY_STATEMENT_KIND_{kind.upper()}"),
                expression=str(text.value),
                location=text.loc.message(),
            )
            try:
                rules.append(parse_statement(kind, str(text.value), name, index))
            except StatementError as exc:
                check.error(
                    "bad_statement", str(exc), Loc(text.loc.file, text.loc.line, text.loc.column + exc.column - 1)
                )
        blocks.append((name, rules))
    if blocks and check.ok():
        _compile(check, definition, blocks)
    return blocks


def _compile(
    check: _Checker, definition: agent_pb2.AgentDefinition, blocks: list[tuple[str, list[dict[str, Any]]]]
) -> None:
    """The policy engine must accept the generated policy (it would refuse it at creation otherwise)."""
    _, text = policy_document(PLACEHOLDER_AGENT, definition.metadata.name, blocks)
    try:
        compile_sources(text, "inline")
    except DocumentError as exc:
        places = [s.location for inline in definition.policies for s in inline.statements]
        names = {f"{inline.name}-{i}": s.location for inline in definition.policies
                 for i, s in enumerate(inline.statements, start=1)}  # fmt: skip
        for problem in exc.issues:
            at = _statement_at(problem.message, places, names)
            loc = Loc(at.file, at.line, at.column) if at is not None else check.raw.loc
            check.error("bad_statement", _plain_message(problem.message), loc)


def _statement_at(
    message: str, places: list[common_pb2.SourceLocation], names: dict[str, common_pb2.SourceLocation]
) -> common_pb2.SourceLocation | None:
    """The statement an engine message is about: ``rules.<i>...`` or ``rule <block>-<n>: ...``."""
    by_index = re.match(r"rules\.(\d+)", message)
    if by_index and int(by_index.group(1)) < len(places):
        return places[int(by_index.group(1))]
    by_name = re.match(r"rule (\S+):", message)
    return names.get(by_name.group(1)) if by_name else None


def _plain_message(message: str) -> str:
    """Drop the generated document's path (``rules.0.require.``) from an engine message."""
    return re.sub(r"^(rules\.\d+\.(require\.)?|rule \S+: )", "", message)
