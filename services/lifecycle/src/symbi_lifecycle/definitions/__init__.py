"""Agent definitions: the Symbi DSL and manifests (YAML, TOML, JSON), one model, checked.

``load(source)`` returns the ``AgentDefinition`` and every problem found (with file,
line and column); ``policy_for(built, agent_id)`` renders the agent's inline
policies as the policy document registered with the policy service.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from symbi_lifecycle.definitions.dsl import parse_dsl
from symbi_lifecycle.definitions.manifest import parse_manifest
from symbi_lifecycle.definitions.model import Built, build
from symbi_lifecycle.definitions.raw import DefinitionError, Loc, issue
from symbi_lifecycle.definitions.statements import policy_document
from symbi_proto.v1 import agent_pb2, common_pb2

FORMATS = {
    ".symbi": agent_pb2.DEFINITION_FORMAT_DSL,
    ".yaml": agent_pb2.DEFINITION_FORMAT_YAML,
    ".yml": agent_pb2.DEFINITION_FORMAT_YAML,
    ".toml": agent_pb2.DEFINITION_FORMAT_TOML,
    ".json": agent_pb2.DEFINITION_FORMAT_JSON,
}
_MANIFEST = {
    agent_pb2.DEFINITION_FORMAT_YAML: "yaml",
    agent_pb2.DEFINITION_FORMAT_TOML: "toml",
    agent_pb2.DEFINITION_FORMAT_JSON: "json",
}


def source_of(path: Path) -> agent_pb2.DefinitionSource:
    fmt = FORMATS.get(path.suffix)
    if fmt is None:
        raise ValueError(f"{path}: unknown definition format (use {', '.join(FORMATS)})")
    return agent_pb2.DefinitionSource(format=fmt, text=path.read_text(encoding="utf-8"), name=str(path))


def load(source: agent_pb2.DefinitionSource, *, extra_capabilities: Iterable[str] = ()) -> Built:
    """The definition in ``source`` and its problems; syntax errors are problems too."""
    name = source.name or "definition"
    try:
        if source.format == agent_pb2.DEFINITION_FORMAT_DSL:
            raw = parse_dsl(source.text, name)
        elif source.format in _MANIFEST:
            raw = parse_manifest(source.text, name, _MANIFEST[source.format])
        else:
            raise DefinitionError([_unknown_format(name)])
    except DefinitionError as exc:
        return Built(agent_pb2.AgentDefinition(source=source), list(exc.issues))
    return build(raw, source, extra_capabilities)


def _unknown_format(name: str) -> common_pb2.ValidationIssue:
    return issue("unknown_format", "the definition format is not set (dsl, yaml, toml or json)", Loc(name))


def policy_for(built: Built, agent_id: str) -> tuple[str, str] | None:
    """(policy id, YAML) of the agent's inline policies, or None when it has none."""
    if not any(rules for _, rules in built.rules):
        return None
    return policy_document(agent_id, built.definition.metadata.name, built.rules)


__all__ = ["FORMATS", "Built", "DefinitionError", "load", "policy_for", "source_of"]
