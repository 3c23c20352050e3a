"""The condition language: parsed once with a real grammar, compiled into closures.

Grammar (lowest precedence first)::

    expr     := expr "or" expr | expr "and" expr | "not" expr | comparison
    compare  := operand (OP | "in" | "not in") operand
    OP       := == != < <= > >= contains contains_any contains_all matches =~
    operand  := path | literal | [literal, ...] | func(expr, ...) | ( expr )
    literal  := "string" | 'string' | number | true | false
    func     := has(path) | len(x) | lower(x)

Semantics, all fail-closed: comparing values of different types is an error, not
``false``; ``matches`` takes a glob literal (``*`` matches anything), ``=~`` a regex
literal (searched, anchor it yourself); list equality ignores order;
``resource.sensitivity`` compared with a level name orders by level. Errors raise
``EvalError``; the engine turns them into denies. Paths are checked at compile time
(``facts.accessor``), as are the types of known fields, so ``subject.roles > 3`` is
rejected when the policy is loaded, not when a request arrives.

A compiled ``Predicate`` runs with no parsing and no dictionary lookups of names.
Compiled with ``record=True`` it also appends each leaf's value to ``Facts.trace``,
which is how ``Explain`` shows why a rule matched.
"""

from __future__ import annotations

import ast
import datetime as dt
import fnmatch
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from symbi_policy.facts import (
    ANY,
    BOOL,
    LIST,
    NUM,
    SENSITIVITY,
    SENSITIVITY_LEVELS,
    STR,
    TIME,
    EvalError,
    Facts,
    MissingAttribute,
    PathError,
    accessor,
)
from symbi_proto.v1 import policy_pb2

GRAMMAR = r"""
?start: expr
?expr: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: _NOT not_expr -> negation
         | comparison
?comparison: operand
           | operand OP operand -> compare
           | operand _NOT _IN operand -> not_in
           | operand _IN operand -> in_
?operand: path
        | literal
        | list
        | call
        | "(" expr ")"
path: NAME ("." NAME)*
call: NAME "(" [expr ("," expr)*] ")"
list: "[" [literal ("," literal)*] "]"
?literal: STRING -> string
        | NUMBER -> number
        | "-" NUMBER -> negative
        | _TRUE -> true
        | _FALSE -> false
OP: "==" | "!=" | "<=" | ">=" | "<" | ">" | "=~" | "contains_any" | "contains_all" | "contains" | "matches"
_OR: "or"
_AND: "and"
_NOT: "not"
_IN: "in"
_TRUE: "true"
_FALSE: "false"
NAME: /[A-Za-z_][A-Za-z0-9_]*/
STRING: /"(?:[^"\\\n]|\\.)*"/ | /'(?:[^'\\\n]|\\.)*'/
NUMBER: /\d+(\.\d+)?([eE][+-]?\d+)?/
%import common.WS
%ignore WS
"""

MAX_EXPRESSION_CHARS = 4096

Predicate = Callable[[Facts], Any]
_LIST_TYPES: Any = (tuple, list, frozenset, type(policy_pb2.Subject().capabilities))


class ExprError(ValueError):
    """A condition that does not parse or type-check; ``line``/``column`` are 1-based in the text."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.line, self.column = line, column


@functools.cache
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)


@dataclass(frozen=True, slots=True)
class Compiled:
    fn: Predicate
    type: str
    text: str
    uses_time: bool = False
    literal: Any = None
    is_literal: bool = False
    sensitivity: bool = False


def compile_expression(text: str, *, record: bool = False) -> Compiled:
    """Parse and compile a condition; it must yield a boolean."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExprError(f"condition is {len(text)} characters; the limit is {MAX_EXPRESSION_CHARS}")
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise ExprError(_describe_parse_error(exc, text), exc.line or 1, exc.column or 1) from None
    except LarkError as exc:  # pragma: no cover - other grammar failures
        raise ExprError(str(exc)) from None
    compiler = _Compiler(text, record)
    result = compiler.node(tree)
    if result.type not in (BOOL, ANY):
        raise ExprError(f"condition yields a {result.type}, not a boolean: {result.text}")
    if result.type == ANY:  # a bare attribute: it must hold a boolean when the request arrives
        return Compiled(compiler.boolean(result), BOOL, result.text, result.uses_time)
    return result


def _describe_parse_error(exc: UnexpectedInput, text: str) -> str:
    if isinstance(exc, UnexpectedEOF):
        return "condition ends too early"
    if isinstance(exc, UnexpectedToken):
        expected = sorted(_PRETTY.get(name, name.lower()) for name in exc.expected if not name.startswith("__"))
        hint = f"; expected {', '.join(expected[:12])}" if expected else ""
        if exc.token.type == "$END":
            return f"condition ends too early{hint}"
        return f"unexpected {exc.token.value!r} at column {exc.column}{hint}"
    if isinstance(exc, UnexpectedCharacters):
        return f"unexpected character {text[exc.pos_in_stream or 0]!r} at column {exc.column}"
    return str(exc)  # pragma: no cover


_PRETTY = {
    "_AND": "'and'", "_OR": "'or'", "_NOT": "'not'", "_IN": "'in'", "OP": "an operator", "NAME": "a name",
    "STRING": "a string", "NUMBER": "a number", "RPAR": "')'", "LPAR": "'('", "RSQB": "']'", "LSQB": "'['",
    "COMMA": "','", "DOT": "'.'", "_TRUE": "true", "_FALSE": "false", "MINUS": "'-'",
}  # fmt: skip


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, (int, float)):
        return NUM
    if isinstance(value, str):
        return STR
    if isinstance(value, dt.datetime):
        return TIME
    if isinstance(value, _LIST_TYPES):
        return LIST
    return ANY  # pragma: no cover - accessors only yield the kinds above


def show(value: Any) -> str:
    if isinstance(value, _LIST_TYPES) and not isinstance(value, (tuple, list)):
        value = list(value)
    if isinstance(value, frozenset):
        value = sorted(value)
    return repr(value) if not isinstance(value, bool) else str(value).lower()


def _same_kind(op: str, a: Any, b: Any) -> str:
    ka, kb = kind_of(a), kind_of(b)
    if ka != kb:
        raise EvalError(f"'{op}' compares a {ka} ({show(a)}) with a {kb} ({show(b)})")
    return ka


def _eq(a: Any, b: Any) -> bool:
    if _same_kind("==", a, b) == LIST:
        return frozenset(a) == frozenset(b)
    return bool(a == b)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _ordered(op: str) -> Callable[[Any, Any], bool]:
    compare = _ORDER[op]

    def run(a: Any, b: Any) -> bool:
        if _same_kind(op, a, b) not in (NUM, STR, TIME):
            raise EvalError(f"'{op}' cannot order {kind_of(a)} values")
        return compare(a, b)

    return run


def _member(a: Any, b: Any) -> bool:
    if not isinstance(b, _LIST_TYPES):
        raise EvalError(f"'in' needs a list on the right, not a {kind_of(b)}")
    if isinstance(a, (*_LIST_TYPES, bool)):
        raise EvalError(f"'in' tests one value, not a {kind_of(a)}")
    return a in b


def _contains(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return b in a
    if not isinstance(a, _LIST_TYPES):
        raise EvalError(f"'contains' needs a list or string on the left, not a {kind_of(a)}")
    if isinstance(b, _LIST_TYPES):
        raise EvalError("'contains' tests one value; use contains_any or contains_all for lists")
    return b in a


def _lists(op: str, a: Any, b: Any) -> tuple[Any, frozenset[Any]]:
    if not isinstance(a, _LIST_TYPES) or not isinstance(b, _LIST_TYPES):
        raise EvalError(f"'{op}' needs lists on both sides")
    return a, b if isinstance(b, frozenset) else frozenset(b)


def _contains_any(a: Any, b: Any) -> bool:
    left, right = _lists("contains_any", a, b)
    return not right.isdisjoint(left)


def _contains_all(a: Any, b: Any) -> bool:
    left, right = _lists("contains_all", a, b)
    return right.issubset(left)


_BINARY: dict[str, Callable[[Any, Any], bool]] = {
    "==": _eq,
    "!=": lambda a, b: not _eq(a, b),
    "<": _ordered("<"),
    "<=": _ordered("<="),
    ">": _ordered(">"),
    ">=": _ordered(">="),
    "in": _member,
    "not in": lambda a, b: not _member(a, b),
    "contains": _contains,
    "contains_any": _contains_any,
    "contains_all": _contains_all,
}
# Static result/operand rules: op -> (allowed left types, allowed right types), ANY always allowed.
_STATIC: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "in": (frozenset({STR, NUM}), frozenset({LIST})),
    "not in": (frozenset({STR, NUM}), frozenset({LIST})),
    "contains": (frozenset({LIST, STR}), frozenset({STR, NUM})),
    "contains_any": (frozenset({LIST}), frozenset({LIST})),
    "contains_all": (frozenset({LIST}), frozenset({LIST})),
    "matches": (frozenset({STR}), frozenset({STR})),
    "=~": (frozenset({STR}), frozenset({STR})),
    "<": (frozenset({NUM, STR, TIME}), frozenset({NUM, STR, TIME})),
}
for _op in ("<=", ">", ">="):
    _STATIC[_op] = _STATIC["<"]


def _fast_compare(op: str, left: Compiled, right: Compiled) -> Predicate | None:
    """A known field against a literal of a fitting type: no run-time type checks are needed.

    Fixed fields always hold values of their static type (``facts.accessor``), so these
    forms skip the checked operators; attributes (type ``any``) never take this path.
    """
    if not right.is_literal or left.is_literal or left.type in (ANY, SENSITIVITY):
        return None
    get, lit, lt, rt = left.fn, right.literal, left.type, right.type
    if lt == rt and lt in (STR, NUM) and op in ("==", "!="):
        return (lambda f: get(f) == lit) if op == "==" else (lambda f: get(f) != lit)
    if lt == rt == NUM and op in _ORDER:
        compare = _ORDER[op]
        return lambda f: compare(get(f), lit)
    if lt == LIST and rt == STR and op == "contains":
        return lambda f: lit in get(f)
    if lt == LIST and rt == LIST and op == "contains_any":
        return lambda f: not lit.isdisjoint(get(f))
    if lt == LIST and rt == LIST and op == "contains_all":
        return lambda f: lit.issubset(get(f))
    if lt == STR and rt == LIST and op in ("in", "not in"):
        return (lambda f: get(f) in lit) if op == "in" else (lambda f: get(f) not in lit)
    return None


def _truth(value: Any, text: str) -> bool:
    if not isinstance(value, bool):
        raise EvalError(f"{text} is a {kind_of(value)}, not a boolean")
    return value


class _Compiler:
    def __init__(self, source: str, record: bool) -> None:
        self.source = source
        self.record = record

    def text(self, tree: Tree[Token] | Token) -> str:
        if isinstance(tree, Token):
            return str(tree.value)
        meta = tree.meta
        if getattr(meta, "empty", True):
            return ""
        return self.source[meta.start_pos : meta.end_pos]

    def error(self, tree: Tree[Token] | Token, message: str) -> ExprError:
        line = getattr(tree, "line", None) or getattr(getattr(tree, "meta", None), "line", 1)
        column = getattr(tree, "column", None) or getattr(getattr(tree, "meta", None), "column", 1)
        return ExprError(message, int(line or 1), int(column or 1))

    def leaf(self, text: str, fn: Predicate) -> Predicate:
        """Record the value of a leaf predicate into ``Facts.trace`` (explain mode only)."""
        if not self.record:
            return fn

        def recorded(facts: Facts) -> Any:
            try:
                value = fn(facts)
            except EvalError as exc:
                if facts.trace is not None:
                    facts.trace.append(f"{text} -> error: {exc}")
                raise
            if facts.trace is not None:
                facts.trace.append(f"{text} -> {show(value)}")
            return value

        return recorded

    def node(self, tree: Tree[Token] | Token) -> Compiled:
        if isinstance(tree, Token):  # pragma: no cover - the grammar wraps every token
            raise self.error(tree, f"unexpected {tree.value!r}")
        method = getattr(self, f"n_{tree.data}", None)
        if method is None:  # pragma: no cover
            raise self.error(tree, f"unsupported construct {tree.data}")
        result: Compiled = method(tree)
        return result

    # Literals -----------------------------------------------------------------

    def _literal(self, tree: Tree[Token], value: Any, kind: str) -> Compiled:
        return Compiled(lambda _f: value, kind, self.text(tree), literal=value, is_literal=True)

    def n_string(self, tree: Tree[Token]) -> Compiled:
        raw = str(tree.children[0])
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise self.error(tree, f"bad string literal {raw}") from None
        return self._literal(tree, value, STR)

    def n_number(self, tree: Tree[Token]) -> Compiled:
        raw = str(tree.children[0])
        value: int | float = float(raw) if any(c in raw for c in ".eE") else int(raw)
        return self._literal(tree, value, NUM)

    def n_negative(self, tree: Tree[Token]) -> Compiled:
        inner = self.n_number(tree)
        return self._literal(tree, -inner.literal, NUM)

    def n_true(self, tree: Tree[Token]) -> Compiled:
        return self._literal(tree, True, BOOL)

    def n_false(self, tree: Tree[Token]) -> Compiled:
        return self._literal(tree, False, BOOL)

    def n_list(self, tree: Tree[Token]) -> Compiled:
        items = [self.node(child) for child in tree.children]
        kinds = {item.type for item in items}
        if len(kinds) > 1:
            raise self.error(tree, f"a list holds values of one type, not {' and '.join(sorted(kinds))}")
        if kinds == {BOOL}:
            raise self.error(tree, "a list of booleans means nothing here")
        return self._literal(tree, frozenset(item.literal for item in items), LIST)

    # Paths and functions ------------------------------------------------------

    def n_path(self, tree: Tree[Token]) -> Compiled:
        parts = tuple(str(token) for token in tree.children)
        try:
            acc = accessor(parts)
        except PathError as exc:
            raise self.error(tree, str(exc)) from None
        return Compiled(acc.get, acc.type, acc.path, uses_time=acc.uses_time, sensitivity=acc.type == SENSITIVITY)

    def n_call(self, tree: Tree[Token]) -> Compiled:
        name = str(tree.children[0])
        args = [self.node(child) for child in tree.children[1:]]
        text = self.text(tree)
        if len(args) != 1:
            raise self.error(tree, f"{name}() takes one argument")
        arg = args[0]
        if name == "has":
            first = tree.children[1]
            if not isinstance(first, Tree) or first.data != "path":
                raise self.error(tree, "has() takes an attribute path, e.g. has(context.risk_score)")
            get = arg.fn

            def has(facts: Facts) -> bool:
                try:
                    get(facts)
                except MissingAttribute:
                    return False
                return True

            return Compiled(self.leaf(text, has), BOOL, text, arg.uses_time)
        if name == "len":
            if arg.type not in (LIST, STR, ANY):
                raise self.error(tree, f"len() takes a list or string, not a {arg.type}")
            get = arg.fn

            def length(facts: Facts) -> int:
                value: Any = get(facts)
                if kind_of(value) not in (STR, LIST):
                    raise EvalError(f"len() of a {kind_of(value)}")
                return len(value)

            return Compiled(length, NUM, text, arg.uses_time)
        if name == "lower":
            if arg.type not in (STR, ANY, SENSITIVITY):
                raise self.error(tree, f"lower() takes a string, not a {arg.type}")
            get = arg.fn

            def lower(facts: Facts) -> str:
                value = get(facts)
                if not isinstance(value, str):
                    raise EvalError(f"lower() of a {kind_of(value)}")
                return value.lower()

            return Compiled(lower, STR, text, arg.uses_time)
        raise self.error(tree, f"unknown function {name}() (has, len, lower)")

    # Comparisons --------------------------------------------------------------

    def n_in_(self, tree: Tree[Token]) -> Compiled:
        return self._binary(tree, "in", self.node(tree.children[0]), self.node(tree.children[1]))

    def n_not_in(self, tree: Tree[Token]) -> Compiled:
        return self._binary(tree, "not in", self.node(tree.children[0]), self.node(tree.children[1]))

    def n_compare(self, tree: Tree[Token]) -> Compiled:
        left, op, right = tree.children
        return self._binary(tree, str(op), self.node(left), self.node(right))

    def _binary(self, tree: Tree[Token], op: str, left: Compiled, right: Compiled) -> Compiled:
        text = self.text(tree)
        uses_time = left.uses_time or right.uses_time
        if left.sensitivity or right.sensitivity:
            return self._sensitivity(tree, op, left, right, text)
        self._check_static(tree, op, left, right)
        if op in ("matches", "=~"):
            return self._pattern(tree, op, left, right, text)
        fast = _fast_compare(op, left, right)
        if fast is not None:
            return Compiled(self.leaf(text, fast), BOOL, text, uses_time)
        compare = _BINARY[op]
        lget, rget = left.fn, right.fn
        if right.is_literal:
            value = right.literal
            fn: Predicate = lambda f: compare(lget(f), value)  # noqa: E731 - the hot path
        else:
            fn = lambda f: compare(lget(f), rget(f))  # noqa: E731
        return Compiled(self.leaf(text, fn), BOOL, text, uses_time)

    def _check_static(self, tree: Tree[Token], op: str, left: Compiled, right: Compiled) -> None:
        lt, rt = left.type, right.type
        if op in ("==", "!="):
            if ANY not in (lt, rt) and lt != rt:
                hint = " (use contains)" if LIST in (lt, rt) else ""
                raise self.error(tree, f"'{op}' compares a {lt} with a {rt}{hint}: {self.text(tree)}")
            return
        allowed_left, allowed_right = _STATIC[op]
        if lt != ANY and lt not in allowed_left:
            raise self.error(tree, f"'{op}' cannot take a {lt} on the left: {self.text(tree)}")
        if rt != ANY and rt not in allowed_right:
            raise self.error(tree, f"'{op}' cannot take a {rt} on the right: {self.text(tree)}")
        if op in _ORDER and ANY not in (lt, rt) and lt != rt:
            raise self.error(tree, f"'{op}' compares a {lt} with a {rt}: {self.text(tree)}")

    def _pattern(self, tree: Tree[Token], op: str, left: Compiled, right: Compiled, text: str) -> Compiled:
        if not right.is_literal:
            raise self.error(tree, f"'{op}' needs a literal pattern on the right")
        pattern = str(right.literal)
        try:
            regex = re.compile(fnmatch.translate(pattern) if op == "matches" else pattern)
        except re.error as exc:
            raise self.error(tree, f"bad pattern {pattern!r}: {exc}") from None
        test = regex.fullmatch if op == "matches" else regex.search
        get = left.fn

        def match(facts: Facts) -> bool:
            value = get(facts)
            if not isinstance(value, str):
                raise EvalError(f"'{op}' needs a string, not a {kind_of(value)}")
            return test(value) is not None

        return Compiled(self.leaf(text, match), BOOL, text, left.uses_time)

    def _sensitivity(self, tree: Tree[Token], op: str, left: Compiled, right: Compiled, text: str) -> Compiled:
        """``resource.sensitivity >= "confidential"``: compare levels, not spellings."""
        if left.sensitivity and right.sensitivity:
            raise self.error(tree, "compare resource.sensitivity with a level name")
        path, other, flipped = (left, right, False) if left.sensitivity else (right, left, True)
        if op in ("in", "not in") and not flipped and other.is_literal and other.type == LIST:
            unknown = sorted(str(v) for v in other.literal if v not in SENSITIVITY_LEVELS)
            if unknown:
                raise self.error(
                    tree, f"unknown sensitivity {', '.join(unknown)} (one of {', '.join(SENSITIVITY_LEVELS)})"
                )
            return self._binary_plain(op, path, other, text)
        if not other.is_literal or other.type != STR or op not in ("==", "!=", *_ORDER):
            raise self.error(
                tree, f"resource.sensitivity is compared with a level name: {', '.join(SENSITIVITY_LEVELS)}"
            )
        level = SENSITIVITY_LEVELS.get(str(other.literal))
        if level is None:
            raise self.error(tree, f"unknown sensitivity {other.literal!r} (one of {', '.join(SENSITIVITY_LEVELS)})")
        symbol = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}.get(op, op) if flipped else op
        compare = _BINARY[symbol]
        get = path.fn
        fn = lambda f: compare(SENSITIVITY_LEVELS[get(f)], level)  # noqa: E731
        return Compiled(self.leaf(text, fn), BOOL, text)

    def _binary_plain(self, op: str, left: Compiled, right: Compiled, text: str) -> Compiled:
        compare, lget, value = _BINARY[op], left.fn, right.literal
        return Compiled(self.leaf(text, lambda f: compare(lget(f), value)), BOOL, text)

    # Boolean structure -------------------------------------------------------

    def boolean(self, item: Compiled) -> Predicate:
        if item.type == BOOL:
            return item.fn
        if item.type != ANY:
            raise ExprError(f"{item.text} is a {item.type}, not a boolean")
        get, text = item.fn, item.text
        return lambda f: _truth(get(f), text)

    def n_negation(self, tree: Tree[Token]) -> Compiled:
        inner = self.node(tree.children[0])
        fn = self.boolean(inner)
        return Compiled(lambda f: not fn(f), BOOL, self.text(tree), inner.uses_time)

    def n_and_expr(self, tree: Tree[Token]) -> Compiled:
        parts = [self.node(child) for child in tree.children]
        fns = tuple(self.boolean(part) for part in parts)

        def both(facts: Facts) -> bool:
            for fn in fns:  # noqa: SIM110 - a plain loop: all() with a generator is slower here
                if not fn(facts):
                    return False
            return True

        return Compiled(both, BOOL, self.text(tree), any(p.uses_time for p in parts))

    def n_or_expr(self, tree: Tree[Token]) -> Compiled:
        parts = [self.node(child) for child in tree.children]
        fns = tuple(self.boolean(part) for part in parts)

        def either(facts: Facts) -> bool:
            for fn in fns:  # noqa: SIM110 - a plain loop: any() with a generator is slower here
                if fn(facts):
                    return True
            return False

        return Compiled(either, BOOL, self.text(tree), any(p.uses_time for p in parts))


def _constant(text: str) -> Callable[[Facts], str]:
    return lambda _facts: text


def _text_of(get: Predicate) -> Callable[[Facts], str]:
    return lambda facts: str(get(facts))


_TEMPLATE_PART = re.compile(r"\{([^{}]*)\}")


def compile_template(template: str) -> tuple[Callable[[Facts], str], bool]:
    """``"agent:{subject.id}:tool:{resource.id}"`` -> a function of the request, and whether it reads time."""
    pieces: list[Callable[[Facts], str]] = []
    uses_time = False
    pos = 0
    for match in _TEMPLATE_PART.finditer(template):
        literal = template[pos : match.start()]
        pieces.append(_constant(literal))
        parts = tuple(part.strip() for part in match.group(1).split("."))
        try:
            acc = accessor(parts)
        except PathError as exc:
            raise ExprError(f"in template {template!r}: {exc}", 1, match.start() + 1) from None
        if acc.type not in (STR, NUM, ANY, SENSITIVITY):
            raise ExprError(f"in template {template!r}: {acc.path} is a {acc.type}", 1, match.start() + 1)
        uses_time = uses_time or acc.uses_time
        pieces.append(_text_of(acc.get))
        pos = match.end()
    if "{" in template[pos:] or "}" in template[pos:]:
        raise ExprError(f"unbalanced braces in template {template!r}", 1, pos + 1)
    pieces.append(_constant(template[pos:]))
    return (lambda facts: "".join(piece(facts) for piece in pieces)), uses_time
