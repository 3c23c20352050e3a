"""`symbi context ...` as a person runs it: a subprocess against the running services."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ContextStack
from .test_rag import HANDBOOK, make_pdf

pytestmark = pytest.mark.integration


async def symbi(stack: ContextStack, agent: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "symbi_cli", "context", "--nats-url", stack.settings.nats.url, "--agent", agent]
    return await asyncio.to_thread(subprocess.run, [*argv, *args], capture_output=True, text=True, timeout=60)


async def test_ingest_search_ask_store_delete(context_stack: ContextStack, tmp_path: Path) -> None:
    stack = context_stack
    writer = await stack.agent("cli_writer", capabilities=("shared_knowledge",))
    (tmp_path / "handbook.md").write_bytes(HANDBOOK)
    (tmp_path / "travel.pdf").write_bytes(make_pdf(["Hotel stays are capped at 180 EUR per night."]))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")

    files = [str(tmp_path / name) for name in ("handbook.md", "travel.pdf", "broken.pdf")]
    ingested = await symbi(stack, writer, "--json", "ingest", *files)
    assert ingested.returncode == 1  # one file failed: said, and the others are in
    assert "[3/3] " in ingested.stderr
    assert "cannot read the PDF" in ingested.stderr
    assert [r["file"].rsplit("/", 1)[1] for r in json.loads(ingested.stdout)] == ["handbook.md", "travel.pdf"]

    asked = await symbi(stack, writer, "ask", "How long are backups kept?")
    assert asked.returncode == 0, asked.stderr
    assert "35 days" in asked.stdout
    assert "[1] handbook.md" in asked.stdout
    assert "extractive; ms: analysis" in asked.stderr

    found = await symbi(stack, writer, "search", "hotel price limit", "--limit", "1")
    assert found.returncode == 0, found.stderr
    assert "travel.pdf" in found.stdout
    assert "1 items (all-MiniLM-L6-v2" in found.stdout

    stored = await symbi(stack, writer, "store", "The user's name is Dana", "--kind", "short-term", "--ttl", "60")
    assert stored.returncode == 0, stored.stderr
    recalled = await symbi(stack, writer, "--json", "retrieve", "what is the user called?", "--kind", "short-term")
    items = json.loads(recalled.stdout)["items"]
    assert [i["context_id"] for i in items] == [stored.stdout.strip()]
    deleted = await symbi(stack, writer, "delete", stored.stdout.strip())
    assert deleted.stdout.strip() == "1 deleted"

    stranger = await symbi(stack, "0190f3c2-0000-7000-8000-000000000000", "ask", "anything?")
    assert stranger.returncode == 1
    assert "not_found" in stranger.stderr
