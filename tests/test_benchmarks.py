"""Every benchmark still runs (tiny counts) and prints its machine-readable line.

No timing is asserted here; figures come from running the benchmarks themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SMOKE_ARGS = {
    "natsio_rpc.py": ["--requests", "64", "--concurrency", "4"],
    "envelope.py": ["--messages", "50"],
    "policy.py": ["--quick"],
    "audit.py": ["--quick"],
    "scheduler.py": ["--quick"],
    "sandbox.py": ["--quick"],
    "messaging.py": ["--quick"],
    "context.py": ["--quick"],
    "mcp_gateway.py": ["--quick"],
    "api.py": ["--quick"],
    "run_all.py": ["--quick", "--only", "envelope,natsio_rpc", "--no-sweep"],
}


@pytest.mark.parametrize("script", sorted(SMOKE_ARGS))
def test_benchmark_runs_and_reports(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *SMOKE_ARGS[script]],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    assert len(lines) == 1
    doc = json.loads(lines[0].removeprefix("BENCH "))
    assert doc["benchmark"] == script.removesuffix(".py")
    assert doc["p50_ratio"] > 0
    assert doc["throughput_ratio"] > 0


def test_every_benchmark_has_a_smoke_run() -> None:
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(SMOKE_ARGS)
