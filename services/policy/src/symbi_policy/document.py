"""Policy documents: the file format, read with the line and column of every value.

A document is YAML (JSON is accepted as the YAML subset it is); a file may hold
several documents separated by ``---``, each one policy. The shape is the pydantic
model ``PolicyDoc`` below, documented with examples in ``docs/policy.md``. Unknown
keys are errors, so a typo never silently widens a policy.

``load_documents`` returns each document's data, the location of every key path
(so later checks can point at the line), and the document's own text (what is
registered and stored). Problems are collected as ``Issue``s and raised together
in a ``DocumentError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from symbi_common.units import parse_duration, parse_size

MAX_DOCUMENT_BYTES = 1024 * 1024
# libyaml when the wheel has it (it does on the platforms we ship): ~30x faster, same marks.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
FORMATS = ("yaml", "json")
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}" if self.line else self.file


@dataclass(frozen=True, slots=True)
class Issue:
    message: str
    location: Location
    code: str = "invalid_policy"
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class DocumentError(ValueError):
    """One or more problems in a policy document; the first one is the message."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(str(issue) for issue in issues[:3]) + (" ..." if len(issues) > 3 else ""))
        self.issues = issues


@dataclass(slots=True)
class Loaded:
    """One document of a file: its data, its text, and where each key path sits."""

    data: Any
    text: str
    name: str
    marks: dict[Path, Location] = field(default_factory=dict)
    keys: dict[Path, Location] = field(default_factory=dict)
    """Where the key of each mapping entry is written (for errors about the key itself)."""
    styles: dict[Path, str | None] = field(default_factory=dict)
    """Scalar style of each value (None plain, a quote, or ``|``/``>``), to place errors inside it."""

    def where(self, path: Path) -> Location:
        """The location of ``path``, or of its nearest located ancestor."""
        for end in range(len(path), -1, -1):
            mark = self.marks.get(path[:end])
            if mark is not None:
                return mark
        return Location(self.name, 1, 1)


def load_documents(text: str, name: str, fmt: str = "yaml") -> list[Loaded]:
    """Parse every document in ``text``; raise ``DocumentError`` for syntax problems."""
    if fmt not in FORMATS:
        raise DocumentError([Issue(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})", Location(name))])
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise DocumentError([Issue(f"document exceeds {MAX_DOCUMENT_BYTES // 1024} KiB", Location(name))])
    loader = _LOADER(text)
    docs: list[Loaded] = []
    issues: list[Issue] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node said there is one
                break
            loaded = Loaded(loader.construct_document(node), _slice(text, node), name)
            _collect_marks(node, (), loaded, issues)
            docs.append(loaded)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        raise DocumentError([Issue(f"YAML syntax: {problem}", Location(name, line, column), "syntax_error")]) from None
    except yaml.YAMLError as exc:
        raise DocumentError([Issue(f"YAML: {exc}", Location(name), "syntax_error")]) from None
    finally:
        loader.dispose()
    if issues:
        raise DocumentError(issues)
    if not docs:
        raise DocumentError([Issue("no policy document found", Location(name), "empty")])
    return docs


def _slice(text: str, node: yaml.Node) -> str:
    """The document's own text: from the start of its first line to the end of its root node."""
    start = text.rfind("\n", 0, node.start_mark.index) + 1
    return text[start : node.end_mark.index].rstrip() + "\n"


def _collect_marks(node: yaml.Node, path: Path, loaded: Loaded, issues: list[Issue]) -> None:
    loaded.marks[path] = Location(loaded.name, node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.ScalarNode):
        loaded.styles[path] = node.style
    elif isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                where = Location(loaded.name, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                issues.append(Issue(f"duplicate key {key!r}", where, "duplicate_key"))
            seen.add(key)
            loaded.keys[(*path, key)] = Location(
                loaded.name, key_node.start_mark.line + 1, key_node.start_mark.column + 1
            )
            _collect_marks(value_node, (*path, key), loaded, issues)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_marks(item, (*path, index), loaded, issues)


# The document model ---------------------------------------------------------------


def _seconds(value: object) -> float:
    return parse_duration(value)


def _bytes(value: object) -> int:
    return parse_size(value)


Seconds = Annotated[float, BeforeValidator(_seconds)]
Bytes = Annotated[int, BeforeValidator(_bytes), Field(ge=0)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class RedactSpec(_Model):
    paths: list[str] = Field(min_length=1)
    replacement: str = ""


class RateLimitSpec(_Model):
    key: str = Field(min_length=1, description="bucket key template, e.g. 'agent:{subject.id}'")
    limit: int = Field(gt=0)
    period: Seconds = Field(gt=0)
    burst: int = Field(default=0, ge=0)


class AuditSpec(_Model):
    record_inputs: bool = False
    record_outputs: bool = False
    category: str = ""


class ApprovalSpec(_Model):
    approver_group: str = Field(min_length=1)
    timeout: Seconds = Field(default=900.0, gt=0)
    reason: str = ""


class LimitsSpec(_Model):
    memory_mb: int | None = Field(default=None, gt=0)
    cpu_cores: float | None = Field(default=None, gt=0)
    disk_io_mbps: int | None = Field(default=None, gt=0)
    network_io_mbps: int | None = Field(default=None, gt=0)
    execution_timeout: Seconds | None = Field(default=None, gt=0)
    max_pids: int | None = Field(default=None, gt=0)
    max_output_bytes: Bytes | None = None


class RequireSpec(_Model):
    sandbox_tier: Literal["Tier1", "Tier2"] | None = None
    redact: RedactSpec | None = None
    rate_limit: RateLimitSpec | None = None
    audit: AuditSpec | None = None
    human_approval: ApprovalSpec | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    max_bytes: Bytes | None = None
    limits: LimitsSpec | None = None
    on_exceed: Literal["deny", "cap"] = "deny"
    """What a request asking for more than ``limits``/``max_tokens``/``max_bytes`` gets."""


RuleType = Literal["access_control", "data_flow", "resource_usage", "audit"]
Effect = Literal["allow", "deny", "require"]


class RuleSpec(_Model):
    name: Name
    type: RuleType = "access_control"
    effect: Effect
    description: str = ""
    priority: int = Field(default=0, ge=-1000, le=1000)
    actions: list[str] = Field(min_length=1)
    operations: list[str] = []
    resources: list[str] = []
    when: str = ""
    reason: str = ""
    labels: list[str] = []
    destinations: list[str] = []
    except_destinations: list[str] = []
    require: RequireSpec | None = None


class PolicyDoc(_Model):
    id: Name
    description: str = ""
    priority: int = Field(default=0, ge=-1000, le=1000)
    cache_ttl: Seconds = Field(default=0.0, ge=0, le=3600)
    rules: list[RuleSpec] = Field(min_length=1, max_length=10_000)


def validate_model(loaded: Loaded) -> PolicyDoc:
    """The document as a ``PolicyDoc``, or a ``DocumentError`` pointing at each bad key."""
    if not isinstance(loaded.data, dict):
        raise DocumentError([Issue("a policy document is a mapping with id and rules", loaded.where(()))])
    try:
        return PolicyDoc.model_validate(loaded.data)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            path = tuple(err["loc"])
            shown = ".".join(str(part) for part in path) or "document"
            if err["type"] == "extra_forbidden":
                issues.append(Issue(f"{shown}: unknown key", loaded.keys.get(path) or loaded.where(path)))
            else:
                issues.append(Issue(f"{shown}: {err['msg']}", loaded.where(path)))
        raise DocumentError(issues) from None
