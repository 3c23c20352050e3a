"""The audit proof of a scenario: each step's events, linked and proven.

Every step ran in its own trace, and every service stamps its audit events with the
trace id of the request that caused them, so a step's events are those with its trace
id (or one of its correlation ids: message, task and tool-call ids). For each step this
module shows the chain from each policy decision to the events that act on it (they
carry its ``decision_id``, or share its correlation id), and proves every event is in
the log: an inclusion proof from the audit service, checked *here* (the event hashes to
the proof's leaf, the path leads to the checkpoint's root, the checkpoint is signed by
one of the log's keys). The ids are written out for ``symbi audit verify --prove-file``,
which proves them again from an exported copy of the log alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from nats.aio.client import Client

from symbi_cli.scenarios.runtime import TRANSIENT, Step
from symbi_common import natsio, subjects
from symbi_common.errors import SymbiError
from symbi_common.retry import retry
from symbi_proto.v1 import audit_pb2, common_pb2

PAGE = 1000
Resp = TypeVar("Resp", bound=Message)
QUIET_S = 1.5


@dataclass
class StepEvidence:
    step: Step
    events: list[audit_pb2.AuditEvent] = field(default_factory=list)
    proven: dict[str, bool] = field(default_factory=dict)
    chains: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.step.name,
            "ok": self.step.ok,
            "detail": self.step.detail,
            "facts": self.step.facts,
            "trace_id": self.step.trace_id,
            "correlation_ids": self.step.correlation_ids,
            "chains": self.chains,
            "events": [
                {
                    "event_id": e.event_id,
                    "sequence": e.sequence,
                    "event_type": e.event_type,
                    "source": e.source,
                    "outcome": audit_pb2.AuditOutcome.Name(e.outcome).removeprefix("AUDIT_OUTCOME_").lower(),
                    "details": MessageToDict(e.details),
                    "proven": self.proven.get(e.event_id, False),
                }
                for e in self.events
            ],
        }


class Evidence:
    def __init__(self, nc: Client, say: Callable[[str], None]) -> None:
        self.nc = nc
        self.say = say
        self.from_sequence = 0
        self.checkpoint = audit_pb2.Checkpoint()

    async def start(self) -> None:
        """Remember where the log ends now: the scenario's events come after."""
        newest = await self._query(
            audit_pb2.AuditQueryRequest(descending=True, page=common_pb2.PageRequest(page_size=1))
        )
        self.from_sequence = newest.events[0].sequence + 1 if newest.events else 0

    async def _ask(self, subject: str, request: Message, reply: type[Resp]) -> Resp:
        """One audit request, asked again while the audit service restarts."""
        return await retry(
            lambda: natsio.request(self.nc, subject, request, reply, timeout=30), TRANSIENT, what=f"ask {subject}"
        )

    async def _query(self, request: audit_pb2.AuditQueryRequest) -> audit_pb2.AuditQueryResponse:
        return await self._ask(subjects.AUDIT_QUERY, request, audit_pb2.AuditQueryResponse)

    async def events(self) -> list[audit_pb2.AuditEvent]:
        out: list[audit_pb2.AuditEvent] = []
        token = ""
        while True:
            request = audit_pb2.AuditQueryRequest(
                from_sequence=self.from_sequence, page=common_pb2.PageRequest(page_size=PAGE, page_token=token)
            )
            reply = await self._query(request)
            out.extend(reply.events)
            token = reply.page.next_page_token
            if not token:
                return out

    async def settle(self, timeout_s: float = 60) -> list[audit_pb2.AuditEvent]:
        """Wait until no new event arrives for a moment and a signed checkpoint covers them all."""
        deadline = time.monotonic() + timeout_s
        seen, quiet_since = -1, time.monotonic()
        while True:
            events = await self.events()
            if len(events) != seen:
                seen, quiet_since = len(events), time.monotonic()
            self.checkpoint = await self._ask(
                subjects.AUDIT_CHECKPOINT, audit_pb2.GetCheckpointRequest(), audit_pb2.Checkpoint
            )
            last = max((e.sequence for e in events), default=-1)
            if time.monotonic() - quiet_since >= QUIET_S and self.checkpoint.tree_size > last:
                return events
            if time.monotonic() > deadline:
                raise SymbiError(f"the audit trail did not settle within {timeout_s:.0f}s ({len(events)} events)")
            await asyncio.sleep(0.25)

    async def prove(self, steps: Sequence[Step]) -> list[StepEvidence]:
        events = await self.settle()
        keys = await natsio.request(
            self.nc,
            subjects.AUDIT_KEYS,
            audit_pb2.ListSigningKeysRequest(),
            audit_pb2.ListSigningKeysResponse,
            timeout=10,
        )
        out = []
        for step in steps:
            mine = [e for e in events if (step.trace_id and e.trace_id == step.trace_id)
                    or (e.correlation_id and e.correlation_id in step.correlation_ids)]  # fmt: skip
            evidence = StepEvidence(step, mine)
            evidence.chains = chains(mine)
            for event in mine:
                evidence.proven[event.event_id] = await self._prove_one(event, keys)
            out.append(evidence)
        return out

    async def _prove_one(self, event: audit_pb2.AuditEvent, keys: audit_pb2.ListSigningKeysResponse) -> bool:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        from symbi_audit import canonical
        from symbi_audit.merkle import verify_inclusion

        reply = await self._ask(
            subjects.AUDIT_INCLUSION,
            audit_pb2.InclusionProofRequest(event_id=event.event_id, tree_size=self.checkpoint.tree_size),
            audit_pb2.InclusionProofResponse,
        )
        cp, proof = reply.checkpoint, reply.proof
        key = next((k for k in keys.keys if k.key_id == cp.key_id), None)
        if key is None or canonical.leaf_hash(reply.event) != proof.leaf_hash or reply.event.event_id != event.event_id:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(key.public_key).verify(cp.signature, canonical.checkpoint_body(cp))
        except Exception:
            return False
        return verify_inclusion(proof.leaf_index, proof.tree_size, proof.leaf_hash, list(proof.path), cp.root_hash)


def chains(events: Sequence[audit_pb2.AuditEvent]) -> list[str]:
    """ "decision -> what acted on it" lines: each policy decision and the events that carry it."""
    lines = []
    decisions = [e for e in events if e.event_type == "policy.decision"]
    for decision in decisions:
        details = MessageToDict(decision.details)
        decision_id = details.get("decision_id", "")
        rule = "/".join(x for x in (details.get("policy_id", ""), details.get("matched_rule", "")) if x) or "default"
        acted = [
            e.event_type + _outcome(e)
            for e in events
            if e is not decision
            and (MessageToDict(e.details).get("decision_id") == decision_id
                 or (e.correlation_id and e.correlation_id == decision.correlation_id
                     and e.event_type != "policy.decision"))
        ]  # fmt: skip
        point = details.get("enforcement_point", "?")
        verdict = details.get("outcome", "?")
        lines.append(f"{point} {verdict} ({rule}) -> {', '.join(acted) or 'no further event'}")
    counted: dict[str, int] = {}
    for line in lines:  # per-item decisions (a document's chunks) say the same thing many times
        counted[line] = counted.get(line, 0) + 1
    return [f"{n} x {line}" if n > 1 else line for line, n in counted.items()]


def _outcome(event: audit_pb2.AuditEvent) -> str:
    details = MessageToDict(event.details)
    for key in ("status", "state", "reason", "to_state"):
        if key in details:
            return f" [{details[key]}]"
    return ""
