"""Pruning rules by resource before evaluating them: large rule sets stay fast.

A rule whose ``resources:`` filter names patterns such as ``tool:server7/*`` can only
match a resource of that type whose id starts with the pattern's literal prefix
(the text before its first ``*``, ``?`` or ``[``). ``RuleIndex`` files each such rule
under (type, prefix); a lookup tries each distinct prefix length of the request's
resource id, so it costs a handful of dictionary lookups however many rules there
are. Rules without a resource filter are always candidates.

Pruning is exact, never approximate: a rule left out is one whose resource filter
would have returned false, and that filter runs before the rule's condition, so no
match and no evaluation error can be hidden by the index. Candidates come back in
evaluation order. Below ``MIN_RULES`` the index is not worth its own cost and every
rule is returned.
"""

from __future__ import annotations

from collections.abc import Sequence

from symbi_policy.compiler import CompiledRule

MIN_RULES = 8
_WILDCARDS = "*?["


def literal_prefix(glob: str) -> str:
    cut = min((i for i in (glob.find(c) for c in _WILDCARDS) if i >= 0), default=len(glob))
    return glob[:cut]


class RuleIndex:
    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self.rules = tuple(rules)
        self.indexed = len(self.rules) >= MIN_RULES
        always: list[int] = []
        by_type: dict[str, dict[str, list[int]]] = {}
        if self.indexed:
            for position, rule in enumerate(self.rules):
                patterns = rule.spec.resources
                if not patterns:
                    always.append(position)
                for pattern in patterns:
                    kind, sep, glob = pattern.partition(":")
                    prefix = literal_prefix(glob) if sep else ""  # `type` alone: any id
                    by_type.setdefault(kind, {}).setdefault(prefix, []).append(position)
        self._always = self._bucket(always)
        self._by_type = {
            kind: {prefix: self._bucket(found) for prefix, found in prefixes.items()}
            for kind, prefixes in by_type.items()
        }
        self._lengths = {kind: tuple(sorted({len(p) for p in prefixes})) for kind, prefixes in by_type.items()}

    def _bucket(self, positions: list[int]) -> tuple[tuple[int, ...], tuple[CompiledRule, ...]]:
        ordered = tuple(sorted(set(positions)))
        return ordered, tuple(self.rules[position] for position in ordered)

    def candidates(self, resource_type: str, resource_id: str) -> Sequence[CompiledRule]:
        if not self.indexed:
            return self.rules
        parts = [self._always] if self._always[0] else []
        for kind in (resource_type, "*"):
            prefixes = self._by_type.get(kind)
            if prefixes is None:
                continue
            for length in self._lengths[kind]:
                if length > len(resource_id):
                    break
                hit = prefixes.get(resource_id[:length])
                if hit is not None:
                    parts.append(hit)
        if not parts:
            return ()
        if len(parts) == 1:
            return parts[0][1]  # already in evaluation order
        positions = sorted({position for found, _ in parts for position in found})
        return [self.rules[position] for position in positions]
