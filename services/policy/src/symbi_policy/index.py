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

MIN_RULES = 16
_WILDCARDS = "*?["


def literal_prefix(glob: str) -> str:
    cut = min((i for i in (glob.find(c) for c in _WILDCARDS) if i >= 0), default=len(glob))
    return glob[:cut]


class RuleIndex:
    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self.rules = tuple(rules)
        self.indexed = len(self.rules) >= MIN_RULES
        self._always: list[int] = []
        self._by_type: dict[str, dict[str, list[int]]] = {}
        self._lengths: dict[str, tuple[int, ...]] = {}
        if not self.indexed:
            return
        for position, rule in enumerate(self.rules):
            patterns = rule.spec.resources
            if not patterns:
                self._always.append(position)
                continue
            for pattern in patterns:
                kind, sep, glob = pattern.partition(":")
                prefix = literal_prefix(glob) if sep else ""  # `type` alone: any id
                self._by_type.setdefault(kind, {}).setdefault(prefix, []).append(position)
        self._lengths = {kind: tuple(sorted({len(p) for p in prefixes})) for kind, prefixes in self._by_type.items()}

    def candidates(self, resource_type: str, resource_id: str) -> Sequence[CompiledRule]:
        if not self.indexed:
            return self.rules
        found: set[int] = set(self._always)
        for kind in (resource_type, "*"):
            prefixes = self._by_type.get(kind)
            if prefixes is None:
                continue
            for length in self._lengths[kind]:
                if length > len(resource_id):
                    break
                hit = prefixes.get(resource_id[:length])
                if hit is not None:
                    found.update(hit)
        return [self.rules[position] for position in sorted(found)]
