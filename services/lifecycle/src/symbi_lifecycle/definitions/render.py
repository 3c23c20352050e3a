"""An ``AgentDefinition`` written back as DSL text (``symbi agent show --dsl``; round-trip tests).

``load(render(d))`` gives back ``d`` (without its source and locations): the
property tests check exactly that for generated definitions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from symbi_lifecycle.definitions.model import FILESYSTEM, PRIORITY, SENSITIVITY, TIERS, TRUST
from symbi_proto.v1 import agent_pb2

_KINDS = {
    agent_pb2.POLICY_STATEMENT_KIND_ALLOW: "allow",
    agent_pb2.POLICY_STATEMENT_KIND_DENY: "deny",
    agent_pb2.POLICY_STATEMENT_KIND_REQUIRE: "require",
    agent_pb2.POLICY_STATEMENT_KIND_AUDIT: "audit",
}


def _name_of(table: Mapping[str, int], value: int) -> str:
    return next(name for name, v in table.items() if v == value)


def value(data: Any) -> str:
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "true" if data else "false"
    if isinstance(data, (int, float)):
        return repr(data)
    if isinstance(data, list):
        return "[" + ", ".join(value(item) for item in data) + "]"
    if isinstance(data, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)} = {value(v)}" for k, v in data.items()) + " }"
        )
    return json.dumps(str(data), ensure_ascii=False)


def long_text(text: str) -> str:
    """Program text across lines as written, where that reads back the same; else one escaped line."""
    if "\n" in text and '"""' not in text and not text.endswith('"'):
        return f'"""{text}"""'
    return value(text)


def _duration(nanos: int) -> str:
    if nanos % 1_000_000_000 == 0:
        return f"{nanos // 1_000_000_000}s"
    return f"{nanos // 1_000_000}ms"


def render(definition: agent_pb2.AgentDefinition) -> str:
    meta = definition.metadata
    out = ["metadata {", f"    name = {value(meta.name)}"]
    for key in ("version", "author", "description"):
        if getattr(meta, key):
            out.append(f"    {key} = {value(getattr(meta, key))}")
    if meta.labels:
        out.append(f"    labels = {value(dict(meta.labels))}")
    out += ["}", ""]
    params = []
    for p in definition.parameters:
        text = f"{p.name}: {p.type}{'?' if p.optional else ''}"
        if p.default_json:
            text += f" = {value(json.loads(p.default_json))}"
        params.append(text)
    returns = f" -> {definition.return_type}" if definition.return_type else ""
    out.append(f"agent {meta.name}({', '.join(params)}){returns} {{")
    if definition.capabilities:
        out.append(f"    capabilities = {value(list(definition.capabilities))}")
    if definition.tenant:
        out.append(f"    tenant = {value(definition.tenant)}")
    for inline in definition.policies:
        out.append(f"    policy {inline.name} {{")
        out += [f"        {_KINDS[s.kind]}: {s.expression}" for s in inline.statements]
        out.append("    }")
    options = _options(definition.options)
    task = _task(definition.task)
    out.append(f"    with {', '.join(options)} {{" if options else "    with {")
    out += [f"        {line}" for line in task]
    out += ["    }", "}"]
    return "\n".join(out) + "\n"


def _options(options: agent_pb2.AgentOptions) -> list[str]:
    out = []
    limits = options.limits
    if options.sandbox_tier:
        out.append(f'sandbox = "{_name_of(TIERS, options.sandbox_tier)}"')
    if limits.execution_timeout.ToNanoseconds():
        out.append(f"timeout = {_duration(limits.execution_timeout.ToNanoseconds())}")
    if limits.memory_mb:
        out.append(f'memory = "{limits.memory_mb}MB"')
    if limits.cpu_cores:
        out.append(f"cpu = {limits.cpu_cores!r}")
    for key in ("disk_io", "network_io"):
        if getattr(limits, f"{key}_mbps"):
            out.append(f"{key} = {getattr(limits, f'{key}_mbps')}")
    if limits.max_pids:
        out.append(f"pids = {limits.max_pids}")
    if limits.max_output_bytes:
        out.append(f'output = "{limits.max_output_bytes}B"')
    if options.network_access:
        out.append("network = true")
    for key, table, field in (
        ("data_sensitivity", SENSITIVITY, options.data_sensitivity),
        ("code_trust", TRUST, options.code_trust),
        ("filesystem", FILESYSTEM, options.filesystem_access),
        ("priority", PRIORITY, options.priority),
    ):
        if field:
            out.append(f'{key} = "{_name_of(table, field)}"')
    if options.inputs:
        out.append(f"inputs = {value(list(options.inputs))}")
    return out


def _task(task: Any) -> list[str]:
    out = [f"image = {value(task.image)}"]
    for key in ("entrypoint", "command"):
        if getattr(task, key):
            out.append(f"{key} = {value(list(getattr(task, key)))}")
    if task.env:
        out.append(f"env = {value(dict(task.env))}")
    if task.working_dir:
        out.append(f"working_dir = {value(task.working_dir)}")
    if task.script:
        out.append(f"script = {long_text(task.script)}")
    return out
