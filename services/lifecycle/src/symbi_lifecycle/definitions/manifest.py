"""Agent manifests: the same definition as YAML, JSON or TOML.

::

    metadata: {name: research_assistant, version: 1.2.0, author: platform team}
    agent: research_assistant            # defaults to metadata.name
    parameters:
      - {name: question, type: string}
      - {name: max_results, type: int, default: 5}
    returns: Answer
    capabilities: [web_search, read_documents]
    policies:
      research_rules:
        - 'allow: tool_invoke(call) on "tool:search/*"'
        - 'deny: data_access if resource.labels contains "pii"'
    with: {sandbox: Tier2, timeout: 30s, memory: 512MB, cpu: 0.5, network: false}
    task: {image: symbi/base:bookworm, command: [python3, -c, "print('hello')"]}
    tenant: research

Statements are written as in the DSL (``kind: text``). YAML and JSON problems carry
line and column; TOML ones the line where the parser reports it.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from symbi_lifecycle.definitions.raw import (
    DefinitionError,
    Loc,
    RawDefinition,
    RawParam,
    RawPolicy,
    Val,
    checked_text,
    issue,
)
from symbi_policy.document import DocumentError, Loaded, load_documents

KEYS = ("metadata", "agent", "parameters", "returns", "capabilities", "policies", "with", "task", "tenant")
_STATEMENT = re.compile(r"^\s*(allow|deny|require|audit)\s*:\s*(.+)$", re.S)


def parse_manifest(text: str, name: str, fmt: str) -> RawDefinition:
    if fmt == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            place = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
            line, column = (int(place.group(1)), int(place.group(2))) if place else (1, 1)
            message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "not valid TOML"
            raise DefinitionError([issue("syntax_error", f"TOML: {message}", Loc(name, line, column))]) from None
        loaded = Loaded(data, text, name)
    else:
        try:
            docs = load_documents(text, name, "json" if fmt == "json" else "yaml")
        except DocumentError as exc:
            raise DefinitionError(
                [issue(i.code, i.message, Loc(i.location.file, i.location.line, i.location.column)) for i in exc.issues]
            ) from None
        if len(docs) != 1:
            raise DefinitionError([issue("one_agent", "a manifest describes exactly one agent", Loc(name, 1, 1))])
        loaded = docs[0]
    return _Reader(loaded).read()


class _Reader:
    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded

    def at(self, *path: str | int) -> Loc:
        where = self.loaded.where(path)
        return Loc(where.file, where.line, where.column)

    def val(self, value: Any, *path: str | int) -> Val:
        """Values with locations, lists and maps included (as the DSL gives them)."""
        if isinstance(value, list):
            return Val([self.val(v, *path, i) for i, v in enumerate(value)], self.at(*path))
        if isinstance(value, dict):
            at = self.at(*path)
            return Val({checked_text(str(k), at): self.val(v, *path, str(k)) for k, v in value.items()}, at)
        if hasattr(value, "isoformat") and not isinstance(value, str):  # YAML/TOML dates: keep as written
            value = value.isoformat()
        at = self.at(*path)
        return Val(checked_text(value, at) if isinstance(value, str) else value, at)

    def read(self) -> RawDefinition:
        data = self.loaded.data
        name = self.loaded.name
        if not isinstance(data, dict):
            raise DefinitionError([issue("not_a_manifest", "a manifest is a mapping", Loc(name, 1, 1))])
        raw = RawDefinition(self.at())
        unknown = [key for key in data if key not in KEYS]
        issues = [issue("unknown_field", f"unknown key {k!r} (known: {', '.join(KEYS)})", self.at(k)) for k in unknown]
        if issues:
            raise DefinitionError(issues)
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise DefinitionError([issue("wrong_type", "metadata is a mapping", self.at("metadata"))])
        raw.metadata = {str(k): self.val(v, "metadata", str(k)) for k, v in metadata.items()}
        agent = data.get("agent", metadata.get("name"))
        if agent is not None:
            raw.name = Val(str(agent), self.at("agent") if "agent" in data else self.at("metadata", "name"))
        for i, param in enumerate(data.get("parameters") or []):
            raw.params.append(self._param(param, i))
        if "returns" in data:
            raw.returns = Val(str(data["returns"]), self.at("returns"))
        capabilities = data.get("capabilities") or []
        raw.capabilities = [self.val(c, "capabilities", i) for i, c in enumerate(capabilities)]
        raw.capabilities_loc = self.at("capabilities")
        for block, statements in (data.get("policies") or {}).items():
            raw.policies.append(self._policy(str(block), statements))
        raw.options = {str(k): self.val(v, "with", str(k)) for k, v in (data.get("with") or {}).items()}
        raw.task = {str(k): self.val(v, "task", str(k)) for k, v in (data.get("task") or {}).items()}
        if "tenant" in data:
            raw.fields["tenant"] = self.val(data["tenant"], "tenant")
        return raw

    def _param(self, param: Any, i: int) -> RawParam:
        where = ("parameters", i)
        if not isinstance(param, dict) or "name" not in param or "type" not in param:
            raise DefinitionError(
                [issue("bad_parameter", "a parameter is {name, type[, optional, default]}", self.at(*where))]
            )
        out = RawParam(self.val(str(param["name"]), *where, "name"), self.val(str(param["type"]), *where, "type"))
        out.optional = bool(param.get("optional", False))
        if "default" in param:
            out.default = self.val(param["default"], *where, "default")
        return out

    def _policy(self, block: str, statements: Any) -> RawPolicy:
        policy = RawPolicy(Val(block, self.at("policies", block)))
        if not isinstance(statements, list):
            raise DefinitionError(
                [issue("wrong_type", "a policy block is a list of statements", self.at("policies", block))]
            )
        for i, text in enumerate(statements):
            match = _STATEMENT.match(str(text))
            if not match:
                raise DefinitionError(
                    [
                        issue(
                            "bad_statement",
                            "a statement is 'allow|deny|require|audit: ...'",
                            self.at("policies", block, i),
                        )
                    ]
                )
            policy.statements.append((match.group(1), Val(match.group(2).strip(), self.at("policies", block, i))))
        return policy
