"""The examples in docs/mcp.md are valid and mean what the page says."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from symbi_common.settings import McpServerConfig, Settings
from symbi_mcp_gateway import signatures
from symbi_mcp_gateway.discovery import read_registry
from symbi_policy.compiler import compile_sources

ROOT = Path(__file__).resolve().parents[3]
PAGE = (ROOT / "docs" / "mcp.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE, re.S)


def test_the_configuration_example_loads() -> None:
    config, _ = blocks("toml")
    settings = Settings.model_validate(tomllib.loads(config))
    files = settings.mcp.servers[1]
    assert files.sandboxed
    assert files.sandbox_tier == "Tier2"
    assert settings.mcp.servers[0].transport == "streamable_http"


def test_the_registry_example_is_read(tmp_path: Path) -> None:
    _, registry = blocks("toml")
    (tmp_path / "search.toml").write_text(registry)
    problems: list[str] = []
    (found,) = read_registry(tmp_path, problems)
    assert not problems
    assert isinstance(found[0], McpServerConfig)
    assert found[0].name == "search-eu"


def test_the_descriptor_document_is_what_the_gateway_signs() -> None:
    shown, signatures_file = (json.loads(b) for b in blocks("json"))
    tool = {"name": "add", "description": "Add two integers.", "inputSchema": shown["input_schema"],
            "annotations": {"readOnlyHint": True}}  # fmt: skip
    assert signatures.descriptor_document(tool) == shown
    assert set(signatures_file["tools"]["add"]) == set(signatures.COVERAGES)


def test_the_signatures_file_format_is_read(tmp_path: Path) -> None:
    _, example = blocks("json")
    path = tmp_path / "signatures.json"
    path.write_text(example)
    assert signatures.load_signatures_file(path)["add"]["schema"] == "MEQCIF..."


def test_the_policy_example_compiles() -> None:
    (policy,) = blocks("yaml")
    (compiled,) = compile_sources(policy, "doc.yaml")
    assert compiled is not None


@pytest.mark.parametrize("command", ["keygen", "sign", "servers", "list", "call", "verify", "pins", "pin", "unpin"])
def test_every_cli_action_shown_exists(command: str) -> None:
    (shell,) = blocks("sh")
    assert f"symbi tools {command}" in shell
    from symbi_cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["tools", command, "--help"])
    assert exited.value.code == 0
