"""Which services exist: discovered through the ``symbi.services`` entry-point group.

Each service package declares ``<name> = "symbi_<pkg>.service:SPEC"`` under
``[project.entry-points."symbi.services"]``; ``symbi serve`` and ``symbi up`` find
them here, so there is one bootstrap and no hard-coded import of any service.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from symbi_common.errors import ConfigError
from symbi_common.service import ServiceSpec

GROUP = "symbi.services"

# Start order for `symbi up`: policy first (others ask it), api last (it fronts the rest).
SERVICE_NAMES: tuple[str, ...] = (
    "policy",
    "audit",
    "lifecycle",
    "scheduler",
    "context",
    "mcp-gateway",
    "sandbox-orchestrator",
    "api",
)


def available() -> list[str]:
    """Installed service names, in start order (known ones first)."""
    names = {ep.name for ep in entry_points(group=GROUP)}
    known = [name for name in SERVICE_NAMES if name in names]
    return known + sorted(names - set(SERVICE_NAMES))


def summaries() -> dict[str, str]:
    """Each installed service's one-line description, from its package metadata (imports nothing)."""
    found: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        meta = ep.dist.metadata if ep.dist is not None else None
        found[ep.name] = str(meta["Summary"]) if meta is not None and meta["Summary"] else ep.value
    return found


def load(name: str) -> ServiceSpec:
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        raise ConfigError(f"unknown service {name!r}; installed: {', '.join(available()) or 'none'}")
    spec = matches[0].load()
    if not isinstance(spec, ServiceSpec):
        raise ConfigError(f"entry point {matches[0].value} is not a ServiceSpec")
    return spec
