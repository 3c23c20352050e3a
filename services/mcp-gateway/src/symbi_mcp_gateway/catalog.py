"""The tools of one server as the gateway offers them: validated, verified, ready to check arguments.

A listed tool is refused (kept, not offered, with the reason) when its name is not a
valid MCP tool name, it repeats another tool's name, or its input schema is not a
valid JSON Schema (checked against its ``$schema``, else Draft 2020-12, as MCP says).
Otherwise whether it is offered is the SchemaPin verdict's (``verification.py``).
Arguments of a call are validated against the input schema before anything is sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
import mcp_types as types

from symbi_common.errors import InvalidArgumentError
from symbi_mcp_gateway.verification import Verdict
from symbi_proto.v1 import tools_pb2

TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_ERRORS_SHOWN = 3


def wire_form(tool: types.Tool) -> dict[str, Any]:
    """The tool as the server sent it (JSON names, absent fields left out)."""
    return tool.model_dump(by_alias=True, exclude_none=True, mode="json")


def schema_problem(schema: Any) -> str:
    """Why ``schema`` is not a usable JSON Schema for tool arguments, or ''."""
    if not isinstance(schema, Mapping):
        return "the input schema is not a JSON object"
    if schema.get("type", "object") != "object":
        return "the input schema must describe an object"
    try:
        validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        validator.check_schema(dict(schema))
    except jsonschema.exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return f"the input schema is not valid JSON Schema at {where}: {exc.message}"
    except Exception as exc:  # an unresolvable $schema, a pathological schema: refused, never raised
        return f"the input schema cannot be checked: {type(exc).__name__}: {exc}"
    return ""


@dataclass
class ToolEntry:
    server: str
    name: str
    wire: dict[str, Any]
    verdict: Verdict
    refused: str = ""
    """Why the tool is refused whatever its signature (bad name, duplicate, invalid schema)."""
    _validator: Any = None

    @property
    def offered(self) -> bool:
        return self.verdict.offered and not self.refused

    @property
    def detail(self) -> str:
        return self.refused or self.verdict.detail

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        if self._validator is None:
            schema = self.wire.get("inputSchema") or {}
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
            self._validator = cls(schema)
        errors = sorted(self._validator.iter_errors(dict(arguments)), key=lambda e: list(e.absolute_path))
        if errors:
            shown = "; ".join(
                f"{'/'.join(str(p) for p in e.absolute_path) or '(arguments)'}: {e.message}"
                for e in errors[:MAX_ERRORS_SHOWN]
            )
            more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
            raise InvalidArgumentError(f"arguments of {self.server}/{self.name} do not match its schema: {shown}{more}")

    def to_proto(self, mode: str) -> tools_pb2.ToolDescriptor:
        wire = self.wire
        out = tools_pb2.ToolDescriptor(
            server=self.server,
            name=self.name,
            title=str(wire.get("title") or ""),
            description=str(wire.get("description") or ""),
            input_schema=json.dumps(wire.get("inputSchema") or {}, sort_keys=True),
            output_schema=json.dumps(wire["outputSchema"], sort_keys=True) if wire.get("outputSchema") else "",
        )
        for key, value in (wire.get("annotations") or {}).items():
            out.annotations[str(key)] = json.dumps(value) if not isinstance(value, str) else value
        out.verification.CopyFrom(self.verdict.to_proto(mode))
        out.verification.offered = self.offered
        if self.refused:
            out.verification.detail = self.refused
        return out


def refusal(wire: Mapping[str, Any], seen: set[str]) -> str:
    name = str(wire.get("name", ""))
    if not TOOL_NAME.fullmatch(name):
        return f"tool name {name[:80]!r} is not a valid MCP tool name"
    if name in seen:
        return f"the server lists {name!r} twice"
    return schema_problem(wire.get("inputSchema"))
