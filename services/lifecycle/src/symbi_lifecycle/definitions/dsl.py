"""The Symbi DSL: ``.symbi`` files, parsed with a grammar (Lark, LALR) into a ``RawDefinition``.

::

    metadata {
        name = "research_assistant"
        version = "1.2.0"
        author = "platform team"
        description = "Finds documents and answers with citations"
    }

    agent research_assistant(question: string, max_results: int = 5) -> Answer {
        capabilities = ["web_search", "read_documents"]

        policy research_rules {
            allow: tool_invoke(call) on "tool:search/*"
            deny: data_access if resource.labels contains "pii" because "no personal data"
            require: sandbox Tier2 for tool_invoke
            audit: all with inputs as "research"
        }

        with sandbox = "Tier2", timeout = 30s, memory = "512MB", cpu = 0.5, network = false {
            image = "symbi/base:bookworm"
            command = ["python3", "-c", "print('hello')"]
        }
    }

Values are strings (``"..."`` with JSON's escapes, or ``\"\"\"...\"\"\"`` across lines), numbers, durations
(``30s``, ``500ms``, ``1h30m``), ``true``/``false``/``null``, bare names (``Tier2``), lists
``[...]`` and maps ``{ KEY = "v" }``. Comments run from ``#`` or ``//`` to the end of a
line (not inside a policy statement, which runs to the end of its line). A syntax
error names the line and column and what was expected there.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

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

GRAMMAR = r"""
start: metadata? agent
metadata: "metadata" "{" entry* "}"
entry: NAME "=" value _SEP?
agent: "agent" NAME "(" params? ")" returns? "{" item* "}"
returns: "->" type
params: param ("," param)* ","?
param: NAME ":" type OPTIONAL? default?
OPTIONAL: "?"
default: "=" value
type: NAME ("<" type ("," type)* ">")?
?item: capabilities | policy | with_block | entry
capabilities: "capabilities" "=" list _SEP?
policy: "policy" NAME "{" statement* "}"
statement: KIND ":" TEXT
KIND: "allow" | "deny" | "require" | "audit"
TEXT: /[^\n]+/
with_block: "with" [option ("," option)*] "{" entry* "}"
option: NAME "=" value
?value: STRING -> string
      | LONG_STRING -> long_string
      | NUMBER -> number
      | DURATION -> duration
      | "true" -> true
      | "false" -> false
      | "null" -> null
      | NAME -> bare
      | list
      | map
list: "[" [value ("," value)* ","?] "]"
map: "{" [pair ("," pair)* ","?] "}"
pair: (NAME | STRING) ("=" | ":") value
_SEP: ";"
LONG_STRING.3: /\"\"\"(.|\n)*?\"\"\"/
DURATION.2: /\d+(\.\d+)?(ms|s|m|h|d)(\d+(\.\d+)?(ms|s|m|h|d))*/
NUMBER: /-?\d+(\.\d+)?([eE][-+]?\d+)?/
STRING: /"(?:[^"\\\n]|\\.)*"/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
COMMENT: /(#|\/\/)[^\n]*/
%import common.WS
%ignore WS
%ignore COMMENT
"""

_PRETTY = {
    "NAME": "a name", "STRING": "a string", "NUMBER": "a number", "DURATION": "a duration", "LBRACE": "'{'",
    "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "EQUAL": "'='", "COMMA": "','",
    "COLON": "':'", "KIND": "allow/deny/require/audit", "TEXT": "a statement", "AGENT": "'agent'",
    "METADATA": "'metadata'", "MORETHAN": "'>'", "LESSTHAN": "'<'", "_SEP": "';'", "LONG_STRING": "a string",
}  # fmt: skip


@functools.cache
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def parse_dsl(text: str, name: str) -> RawDefinition:
    """Parse a ``.symbi`` file; raise ``DefinitionError`` (with line and column) on a syntax error."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        line = exc.line if exc.line and exc.line > 0 else 1
        loc = Loc(name, line, exc.column if exc.column and exc.column > 0 else 1)
        raise DefinitionError([issue("syntax_error", _describe(exc, text), loc)]) from None
    return _Builder(name).build(tree)


def _describe(exc: UnexpectedInput, text: str) -> str:
    if isinstance(exc, UnexpectedEOF):
        return "the file ends too early (a '}' is missing?)"
    if isinstance(exc, UnexpectedToken):
        expected = ", ".join(sorted({_PRETTY.get(t, t.strip("_").lower()) for t in exc.expected})[:10])
        if exc.token.type == "$END":
            return f"the file ends too early; expected {expected}"
        found = str(exc.token.value)
        if found.startswith('"') and exc.token.type not in ("STRING", "LONG_STRING"):
            return 'this string is not closed on its line (use """...""" for text across lines)'
        return f"unexpected {found!r}; expected {expected}"
    if isinstance(exc, UnexpectedCharacters):
        return f"unexpected character {text[exc.pos_in_stream or 0]!r}"
    return str(exc)  # pragma: no cover


class _Builder:
    def __init__(self, name: str) -> None:
        self.name = name

    def loc(self, node: Tree[Token] | Token) -> Loc:
        if isinstance(node, Token):
            return Loc(self.name, node.line or 0, node.column or 0)
        return Loc(self.name, getattr(node.meta, "line", 0), getattr(node.meta, "column", 0))

    def build(self, tree: Tree[Token]) -> RawDefinition:
        raw = RawDefinition(Loc(self.name, 1, 1))
        for child in tree.children:
            if isinstance(child, Tree) and child.data == "metadata":
                for entry in child.children:
                    key, value = self.entry(entry)  # type: ignore[arg-type]
                    raw.metadata[key.value] = value
                    raw.keys[("metadata", key.value)] = key.loc
            elif isinstance(child, Tree) and child.data == "agent":
                self.agent(child, raw)
        return raw

    def entry(self, node: Tree[Token]) -> tuple[Val, Val]:
        name, value = node.children
        return Val(str(name), self.loc(name)), self.value(value)

    def agent(self, node: Tree[Token], raw: RawDefinition) -> None:
        name, *rest = node.children
        raw.name = Val(str(name), self.loc(name))
        raw.loc = self.loc(node)
        for child in rest:
            if not isinstance(child, Tree):
                continue
            if child.data == "params":
                raw.params = [self.param(p) for p in child.children if isinstance(p, Tree)]
            elif child.data == "returns":
                raw.returns = self.type(child.children[0])  # type: ignore[arg-type]
            elif child.data == "capabilities":
                listing = child.children[0]
                raw.capabilities_loc = self.loc(child)
                raw.capabilities = self.value(listing).value
            elif child.data == "policy":
                raw.policies.append(self.policy(child))
            elif child.data == "with_block":
                self.with_block(child, raw)
            elif child.data == "entry":
                key, value = self.entry(child)
                raw.fields[key.value] = value
                raw.keys[("fields", key.value)] = key.loc

    def param(self, node: Tree[Token]) -> RawParam:
        name, type_node, *rest = node.children
        param = RawParam(Val(str(name), self.loc(name)), self.type(type_node))  # type: ignore[arg-type]
        for extra in rest:
            if isinstance(extra, Token) and extra.type == "OPTIONAL":
                param.optional = True
            elif isinstance(extra, Tree) and extra.data == "default":
                param.default = self.value(extra.children[0])
        return param

    def type(self, node: Tree[Token]) -> Val:
        head, *args = node.children
        text = str(head)
        if args:
            text += "<" + ", ".join(str(self.type(a).value) for a in args) + ">"  # type: ignore[arg-type]
        return Val(text, self.loc(node))

    def policy(self, node: Tree[Token]) -> RawPolicy:
        name, *statements = node.children
        policy = RawPolicy(Val(str(name), self.loc(name)))
        for statement in statements:
            kind, text = statement.children  # type: ignore[union-attr]
            policy.statements.append((str(kind), Val(str(text).strip(), self.loc(text))))
        return policy

    def with_block(self, node: Tree[Token], raw: RawDefinition) -> None:
        for child in node.children:
            if isinstance(child, Tree) and child.data == "option":
                option, written = child.children
                raw.options[str(option)] = Val(self.value(written).value, self.loc(option))  # errors point at the name
            elif isinstance(child, Tree) and child.data == "entry":
                name, entry = self.entry(child)
                raw.task[name.value] = entry
                raw.keys[("task", name.value)] = name.loc

    def string(self, token: Token) -> str:
        """A quoted string: JSON's escapes (``\\n``, ``\\"``, ``\\u00e9``, surrogate pairs)."""
        loc = self.loc(token)
        try:
            text = json.loads(str(token))
        except ValueError as exc:
            raise DefinitionError([issue("syntax_error", f"bad escape in a string: {exc.args[0]}", loc)]) from None
        return checked_text(str(text), loc)

    def value(self, node: Tree[Token] | Token) -> Val:
        loc = self.loc(node)
        if isinstance(node, Token):  # pragma: no cover - every value is wrapped by the grammar
            return Val(str(node), loc)
        kind = node.data
        children = node.children
        result: Any
        if kind == "string":
            result = self.string(children[0])  # type: ignore[arg-type]
        elif kind == "long_string":
            result = str(children[0])[3:-3]
        elif kind == "number":
            text = str(children[0])
            result = int(text) if text.lstrip("-").isdigit() else float(text)
        elif kind == "duration":
            result = Duration(str(children[0]))
        elif kind == "true":
            result = True
        elif kind == "false":
            result = False
        elif kind == "null":
            result = None
        elif kind == "bare":
            result = Bare(str(children[0]))
        elif kind == "list":
            result = [self.value(c) for c in children]
        elif kind == "map":
            result = {}
            for pair in children:
                key, value = pair.children  # type: ignore[union-attr]
                text = str(key)
                name = self.string(key) if text.startswith('"') else text  # type: ignore[arg-type]
                result[name] = self.value(value)
        else:  # pragma: no cover
            raise AssertionError(kind)
        return Val(result, loc)


class Duration(str):
    """A duration literal as written (``30s``); ``model.py`` converts it."""

    __slots__ = ()


class Bare(str):
    """An unquoted name used as a value (``Tier2``)."""

    __slots__ = ()
