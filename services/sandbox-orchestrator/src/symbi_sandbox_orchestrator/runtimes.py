"""Which sandbox tiers this node can run, from the Docker daemon's registered runtimes.

Tier 1 needs Docker with ``runc``; Tier 2 needs Docker with ``runsc`` (gVisor). A
tier that is not available is reported as such; tasks needing it are never placed
here, and nothing ever falls back to weaker isolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import docker
from docker.errors import DockerException

TIER_RUNTIMES = {"Tier1": "runc", "Tier2": "runsc"}
PROBE_TIMEOUT_S = 3


@dataclass(frozen=True, slots=True)
class DockerProbe:
    reachable: bool
    runtimes: frozenset[str]
    detail: str

    @property
    def tiers(self) -> list[str]:
        return [tier for tier, runtime in TIER_RUNTIMES.items() if runtime in self.runtimes]

    def describe(self) -> str:
        if not self.reachable:
            return f"Docker unavailable ({self.detail}); no sandbox tier can run tasks on this node"
        missing = [f"{tier} needs {rt}" for tier, rt in TIER_RUNTIMES.items() if rt not in self.runtimes]
        summary = f"tiers available: {', '.join(self.tiers) or 'none'}"
        return f"{summary}; unavailable: {', '.join(missing)}" if missing else summary


def probe_docker(base_url: str | None = None) -> DockerProbe:
    """Ask the Docker daemon which runtimes it has (blocking; run it in a thread)."""
    try:
        client = (
            docker.DockerClient(base_url=base_url, timeout=PROBE_TIMEOUT_S)
            if base_url
            else docker.from_env(timeout=PROBE_TIMEOUT_S)
        )
        try:
            info = client.info()
        finally:
            client.close()
    except DockerException as exc:
        return DockerProbe(False, frozenset(), _short(exc))
    runtimes = frozenset(str(name) for name in (info.get("Runtimes") or {}))
    return DockerProbe(True, runtimes, f"Docker {info.get('ServerVersion', '?')}")


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
