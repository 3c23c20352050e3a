"""docs/context.md: its policy compiles and says what the page says, its config loads, its commands parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from symbi_cli.main import _parser
from symbi_common.policy_client import Principal, Target, request
from symbi_common.settings import load_settings
from symbi_policy.compiler import compile_sources
from symbi_policy.engine import PolicySet

ROOT = Path(__file__).resolve().parents[3]
PAGE = (ROOT / "docs" / "context.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE, re.S)


def test_the_policy_example_decides_as_described() -> None:
    (text,) = blocks("yaml")
    policies = PolicySet(1, {p.id: p for p in compile_sources(text, "docs/context.md")})
    reader = Principal("agent", "a1", tenant="t", capabilities=["read_memory"])
    writer = Principal("agent", "a2", tenant="t", capabilities=["shared_knowledge"])

    def allowed(who: Principal, target: Target, operation: str) -> bool:
        decision = policies.evaluate(request("data_access", who, target, operation=operation))
        return decision.WhichOneof("outcome") in ("allow", "allow_with_conditions")

    assert allowed(reader, Target("memory", "a1", owner="a1"), "write")
    assert not allowed(reader, Target("memory", "a2", owner="a2"), "read")
    assert allowed(reader, Target("knowledge", "k1", owner="a2", labels=["internal"]), "read")
    assert not allowed(reader, Target("knowledge", "k1", owner="a2", labels=["pii"]), "read")
    assert not allowed(reader, Target("knowledge"), "write")
    assert allowed(writer, Target("knowledge"), "write")


def test_the_config_example_loads(tmp_path: Path) -> None:
    (text,) = blocks("toml")
    path = tmp_path / "symbi.toml"
    path.write_text(text)
    settings = load_settings(path, environ={})
    assert settings.context.embedding_dimension == 384
    assert settings.context.vector_db_url == ""


@pytest.mark.parametrize("line", [line for line in blocks("sh")[0].splitlines() if line.strip()])
def test_every_command_on_the_page_parses(line: str) -> None:
    argv = shlex.split(line.replace("<agent id>", "0190f3c2-0000-7000-8000-000000000000"))
    assert argv[0] == "symbi"
    args = _parser().parse_args(argv[1:])
    assert args.command == "context"
