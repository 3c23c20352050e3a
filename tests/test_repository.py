"""The repository keeps its promises: docs match code, examples load, layout is complete."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from symbi_common import catalog
from symbi_common.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_doc_is_generated_from_the_registry() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_example_config_loads_and_equals_the_defaults() -> None:
    settings = load_settings(ROOT / "examples" / "symbi.toml", environ={})
    defaults = Settings()
    assert settings.model_dump(exclude={"runtime": {"state_dir"}}) == defaults.model_dump(
        exclude={"runtime": {"state_dir"}}
    )


def test_every_service_is_a_workspace_package_with_tests() -> None:
    for name in catalog.SERVICE_NAMES:
        root = ROOT / "services" / name
        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        assert project["name"] == f"symbi-{name}"
        assert name in project["entry-points"]["symbi.services"]
        assert list((root / "tests").glob("test_*.py")), f"{name} has no tests"
    assert catalog.available() == list(catalog.SERVICE_NAMES)


def test_readme_states_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "scripts/up.sh" in readme
    assert "scripts/test.sh" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci


def test_readme_performance_section_is_the_committed_report() -> None:
    """README's figures come from benchmarks/report/report.json, never typed by hand."""
    import importlib.util

    report_file = ROOT / "benchmarks" / "report" / "report.json"
    assert report_file.exists(), "run: python benchmarks/run_all.py --readme"
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    assert spec is not None
    assert spec.loader is not None
    run_all = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = run_all  # its dataclasses look their module up
    spec.loader.exec_module(run_all)
    report = json.loads(report_file.read_text())
    assert not report["quick"], "the committed report must come from a full run"
    assert run_all.readme_section(report) in (ROOT / "README.md").read_text()
    for name in report["plots"]:
        assert (ROOT / "benchmarks" / "report" / name).is_file()
