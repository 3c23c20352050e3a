"""docs/api.md: its session runs against a live stack, its policy compiles, its error body is the real one."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from symbi_api.keys import SCOPES
from symbi_api.problems import STATUS, ErrorBody
from symbi_policy.compiler import compile_sources

from .conftest import ApiStack

ROOT = Path(__file__).resolve().parents[3]
PAGE = (ROOT / "docs" / "api.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE, re.S)


def curl(line: str, variables: dict[str, str]) -> tuple[str, str, dict[str, str], Any]:
    """Method, URL, headers and JSON body of one ``curl`` line of the page, its variables filled in."""
    for name, value in variables.items():
        line = line.replace(f"${name}", value)
    words = shlex.split(line)
    assert words[0] == "curl"
    method, url, headers, body = "GET", "", {}, None
    rest = iter(words[1:])
    for word in rest:
        if word == "-X":
            method = next(rest)
        elif word == "-H":
            name, _, value = next(rest).partition(": ")
            headers[name] = value
        elif word == "-d":
            body = json.loads(next(rest))
        elif not word.startswith("-"):
            url = word
    return method, url, headers, body


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="module")
async def test_the_session_runs(api_stack: ApiStack) -> None:
    session = next(block for block in blocks("sh") if "export SYMBI_API" in block)
    variables = {"SYMBI_API": api_stack.url, "KEY": api_stack.admin_key}
    http = api_stack.client()
    answers: list[Any] = []
    for line in session.splitlines():
        if not line.startswith("curl"):
            continue
        method, url, headers, body = curl(line, variables)
        response = await http.request(method, url, headers=headers, json=body)
        assert response.status_code < 300, (line, response.text)
        answers.append(response.json())
        if "agent" in answers[-1] and "agent_id" in answers[-1]["agent"]:
            variables["AGENT_ID"] = answers[-1]["agent"]["agent_id"]
    status, created, listed, ingested, asked, decided, events, terminated = answers
    assert status["status"] == "ok"
    assert created["agent"]["definition"]["metadata"]["name"] == "notes"
    assert variables["AGENT_ID"] in [a["agent_id"] for a in listed["agents"]]
    assert ingested["chunks"] == 1
    assert "35 days" in asked["answer"]
    assert decided["matched_rule"] == "operators-operate"
    assert events["events"][0]["event_type"] == "api.request"
    assert terminated["agent"]["state"] == "AGENT_STATE_TERMINATED"


def test_the_policy_compiles_and_the_error_body_is_ours() -> None:
    (policy,) = blocks("yaml")
    (compiled,) = compile_sources(policy, "api.md", "yaml")
    assert compiled.policy.id == "api-operators"
    (error,) = blocks("json")
    parsed = ErrorBody.model_validate_json(error)
    assert parsed.error.code in STATUS


def test_every_scope_is_documented() -> None:
    for scope in SCOPES:
        assert f"| `{scope}` |" in PAGE, scope
