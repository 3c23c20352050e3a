"""The shape both front ends produce: values with the place they were written.

The DSL parser (``dsl.py``) and the manifest reader (``manifest.py``) each turn
their text into a ``RawDefinition``; ``model.py`` turns that into the one
``AgentDefinition`` model, checking it on the way, so both formats mean the same and
report problems the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from symbi_proto.v1 import common_pb2


@dataclass(frozen=True, slots=True)
class Loc:
    file: str
    line: int = 0
    column: int = 0

    def message(self) -> common_pb2.SourceLocation:
        return common_pb2.SourceLocation(file=self.file, line=self.line, column=self.column)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}" if self.line else self.file


@dataclass(frozen=True, slots=True)
class Val:
    """A value and where it was written."""

    value: Any
    loc: Loc


@dataclass(slots=True)
class RawParam:
    name: Val
    type: Val
    optional: bool = False
    default: Val | None = None


@dataclass(slots=True)
class RawPolicy:
    name: Val
    statements: list[tuple[str, Val]] = field(default_factory=list)  # (kind, text)


@dataclass(slots=True)
class RawDefinition:
    loc: Loc
    name: Val | None = None
    metadata: dict[str, Val] = field(default_factory=dict)
    params: list[RawParam] = field(default_factory=list)
    returns: Val | None = None
    capabilities: list[Val] = field(default_factory=list)
    capabilities_loc: Loc | None = None
    policies: list[RawPolicy] = field(default_factory=list)
    options: dict[str, Val] = field(default_factory=dict)
    task: dict[str, Val] = field(default_factory=dict)
    fields: dict[str, Val] = field(default_factory=dict)
    """Other ``name = value`` entries in the agent body (tenant, ...)."""
    keys: dict[tuple[str, str], Loc] = field(default_factory=dict)
    """Where each key of ``fields``/``task``/``metadata`` was written (``("task", "image")``)."""

    def key_loc(self, section: str, key: str, fallback: Loc) -> Loc:
        return self.keys.get((section, key), fallback)


class DefinitionError(ValueError):
    """Problems that stop a definition from being understood at all (syntax)."""

    def __init__(self, issues: list[common_pb2.ValidationIssue]) -> None:
        first = issues[0]
        loc = first.location
        super().__init__(f"{loc.file}:{loc.line}:{loc.column}: {first.message}")
        self.issues = issues


def checked_text(text: str, loc: Loc) -> str:
    """``text`` if it is valid Unicode; a lone surrogate (from an escape) is a problem at ``loc``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DefinitionError(
            [issue("bad_text", "the text is not valid Unicode (a lone surrogate escape?)", loc)]
        ) from None
    return text


def issue(code: str, message: str, loc: Loc, *, warning: bool = False) -> common_pb2.ValidationIssue:
    severity = common_pb2.ISSUE_SEVERITY_WARNING if warning else common_pb2.ISSUE_SEVERITY_ERROR
    return common_pb2.ValidationIssue(severity=severity, code=code, message=message, location=loc.message())
