"""`symbi audit`: export a log, verify it offline with a public key, and query, prove and report online."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client
from symbi_testing.checks import eventually
from symbi_testing.fixtures import RunService

from symbi_audit import storage
from symbi_audit.service import SPEC
from symbi_common import audit_events, natsio, subjects
from symbi_common.errors import SymbiError
from symbi_common.settings import Settings
from symbi_proto.v1 import audit_pb2

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_audit_streams")]


async def symbi(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "symbi_cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_export_verify_offline_and_query_online(
    run_service: RunService, nc: Client, settings: Settings, nats_url: str, tmp_path: Path
) -> None:
    audit = settings.with_overrides({"audit.checkpoint_interval_s": 0.1})
    await run_service(SPEC, audit)
    publisher = audit_events.AuditPublisher(nc.jetstream(), "tests")
    sent = [
        await publisher.record(
            "tool.call", agent_id="agent-7", details={"tool": "ehr/read", "n": i}, data_labels=["phi"]
        )
        for i in range(30)
    ]
    denied = await publisher.record(
        "policy.decision", agent_id="agent-7", data_labels=["phi"], outcome=audit_pb2.AUDIT_OUTCOME_DENIED,
        details={"reason": "no policy allows tool_invoke"},
    )  # fmt: skip

    async def everything_checkpointed() -> bool:
        try:
            cp = await natsio.request(nc, subjects.AUDIT_CHECKPOINT, audit_pb2.GetCheckpointRequest(),
                                      audit_pb2.Checkpoint, timeout=5)  # fmt: skip
        except SymbiError:  # no log or no checkpoint yet
            return False
        return cp.tree_size >= 32

    await eventually(everything_checkpointed, what="all events checkpointed")
    online = ["audit", "--nats-url", nats_url]

    code, out, err = await symbi(*online, "query", "--agent", "agent-7", "--type", "tool.*", "--limit", "5")
    assert code == 0, err
    assert out.count("tool.call") == 5
    assert "(5 of 30 matching events)" in out
    code, out, _ = await symbi(*online, "proof", sent[12].event_id)
    assert code == 0
    assert "proof leads to the checkpoint root: True" in out
    assert "signed by" in out
    witness, keys = tmp_path / "witness.json", tmp_path / "keys.json"
    assert (await symbi(*online, "checkpoint", "--save", str(witness)))[0] == 0
    assert (await symbi(*online, "keys", "--save", str(keys)))[0] == 0
    code, out, _ = await symbi(*online, "report", "hipaa", "--format", "md")
    assert code == 0
    assert "# HIPAA audit controls" in out
    assert "| agent-7 | 31 |" in out
    assert "Integrity: **verified**" in out
    assert denied.event_id  # the denial is the one row of "Refused access to PHI"
    assert "## Refused access to PHI\n\n1 events." in out

    exported = tmp_path / "export"
    code, out, err = await symbi("audit", "export", str(exported), "--storage", str(audit.audit_storage))
    assert code == 0, err
    assert not list(exported.rglob("*.pem"))  # no private key leaves the storage
    code, out, err = await symbi("audit", "verify", str(exported), "--public-key", str(keys),
                                 "--witness", str(witness), "--signatures")  # fmt: skip
    assert code == 0, err
    assert out.startswith("ok: 32 events")
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{sent[3].event_id}\n{denied.event_id}\n")
    code, out, err = await symbi("audit", "verify", str(exported), "--public-key", str(keys),
                                 "--prove", sent[29].event_id, "--prove-file", str(ids))  # fmt: skip
    assert code == 0, err
    assert out.count("proven ") == 3
    assert f"proven {denied.event_id} (policy.decision): leaf 31 of 32" in out
    code, _, err = await symbi("audit", "verify", str(exported), "--public-key", str(keys), "--prove", "no-such-id")
    assert code == 1
    assert "NOT PROVEN no-such-id" in err

    segment = storage.segments(exported / "log")[0][1]
    records = [item for item in storage.read_records(segment) if not isinstance(item, storage.BadRecord)]
    event = audit_pb2.AuditEvent.FromString(records[9][1])
    event.details["tool"] = "ehr/export"  # an edit, re-framed so the CRC is right
    data = bytearray(segment.read_bytes())
    start, end = records[9][0], records[10][0]
    segment.write_bytes(bytes(data[:start]) + storage.frame(event.SerializeToString()) + bytes(data[end:]))
    code, _, err = await symbi("audit", "verify", str(exported), "--public-key", str(keys))
    assert code == 1
    assert "FAILED at event 9: hash_mismatch" in err

    code, out, _ = await symbi(*online, "rotate-key", "--reason", "test")
    assert code == 0
    assert "signing key is now" in out
    document = json.loads(keys.read_text())
    assert document["keys"][0]["key_id"] in document["log_id"]


async def test_verify_refuses_a_directory_without_a_log(tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text('{"keys": []}')
    code, _, err = await symbi("audit", "verify", str(tmp_path), "--public-key", str(key))
    assert code == 1
    assert "holds no audit log" in err
