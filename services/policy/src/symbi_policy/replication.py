"""The replicated policy set: a JetStream stream is the log, NATS the broadcast.

Every change is one ``PolicyUpdated`` appended to the stream ``POLICY`` on
``symbi.policy.log`` with ``Nats-Expected-Last-Sequence`` set to the writer's
policy-set version. The stream sequence therefore *is* the policy-set version, and
two replicas can never both create version N+1: the server refuses the second
append, whose writer catches up and tries again (re-checking its preconditions).

Only once the stream has accepted a change does its writer broadcast it on
``symbi.policy.updated`` (plain NATS), so every replica has it within milliseconds.
(Broadcasting on the stream's own subject would be wrong: plain subscribers receive
a message even when the stream refuses it, so a losing writer's change would reach
them.) A replica applies a broadcast only when ``previous_policy_set_version``
equals its own version; anything else is a gap, closed by replaying the stream from
its version. A periodic comparison with the stream's last sequence catches an update
missed with no later one to reveal it (say, its writer died between append and
broadcast).

A replica that cannot compile a stored policy (which a correct writer never lets
in) installs it as a deny-everything policy and reports itself degraded: a policy
it cannot read must not silently vanish from the decisions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from prometheus_client import CollectorRegistry, Counter, Gauge

from symbi_common import natsio, subjects
from symbi_common.errors import ConflictError, NotFoundError, SymbiError, UnavailableError
from symbi_policy.compiler import ALL_ACTIONS, CompiledPolicy, CompiledRule, compile_stored
from symbi_policy.document import DocumentError, RuleSpec
from symbi_policy.engine import DEFAULT_MAX_REQUEST_BYTES, PolicySet
from symbi_proto.v1 import policy_pb2

log = logging.getLogger(__name__)

EXPECTED_LAST_SEQ_HEADER = "Nats-Expected-Last-Sequence"
WRONG_LAST_SEQUENCE = 10071  # JetStream API error code
MAX_WRITE_ATTEMPTS = 8


def stream_config() -> StreamConfig:
    """The POLICY stream: every change ever made, kept (never purge it: it is the system of record)."""
    return StreamConfig(
        name=subjects.POLICY_STREAM,
        subjects=[subjects.POLICY_LOG],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        max_age=0,
        duplicate_window=120.0,
    )


@dataclass(frozen=True, slots=True)
class Change:
    """The outcome of a register or delete."""

    policy: policy_pb2.Policy | None
    policy_set_version: int
    unchanged: bool = False


class PolicyStore:
    """This replica's view of the policy set, and the only way to change it."""

    def __init__(
        self,
        js: JetStreamContext,
        nc: Client,
        *,
        instance_id: str,
        metrics: CollectorRegistry,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        timeout_s: float = 5.0,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.js = js
        self.nc = nc
        self.instance_id = instance_id
        self.timeout_s = timeout_s
        self.current = PolicySet(0, max_request_bytes=max_request_bytes)
        self.history: dict[str, dict[int, policy_pb2.Policy]] = {}
        self.broken: dict[str, str] = {}
        self._on_error = on_error or (lambda component, message: None)
        self._lock = asyncio.Lock()
        self._sub: Subscription | None = None
        self._version_gauge = Gauge("symbi_policy_set_version", "Policy-set version in force", registry=metrics)
        self._policies_gauge = Gauge("symbi_policy_policies", "Policies in force", registry=metrics)
        self._resyncs = Counter(
            "symbi_policy_resyncs", "Catch-ups from the POLICY stream", ["reason"], registry=metrics
        )
        self._applied = Counter("symbi_policy_updates_applied", "Policy updates applied", registry=metrics)

    @property
    def version(self) -> int:
        return self.current.version

    async def start(self) -> None:
        await natsio.ensure_stream(self.js, stream_config())
        self._sub = await self.nc.subscribe(subjects.POLICY_UPDATED, cb=self._on_broadcast)
        await self.catch_up("start")

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # the connection may already be draining
                log.debug("policy update subscription: %r", exc)
            self._sub = None

    # Reading the log ------------------------------------------------------------

    async def _on_broadcast(self, msg: Msg) -> None:
        update = policy_pb2.PolicyUpdated()
        try:
            update.ParseFromString(msg.data)
        except DecodeError:
            log.error("unreadable message on %s; catching up from the stream", msg.subject)
            await self.catch_up("unreadable broadcast")
            return
        async with self._lock:
            if update.policy_set_version <= self.version:
                return  # our own write, or old news
            if update.previous_policy_set_version == self.version:
                self._apply([update])
                return
        log.warning(
            "policy update %d follows %d but this replica is at %d: catching up",
            update.policy_set_version,
            update.previous_policy_set_version,
            self.version,
        )
        await self.catch_up("gap")

    async def catch_up(self, reason: str = "check") -> int:
        """Replay the stream from this replica's version; returns how many updates were applied."""
        async with self._lock:
            return await self._catch_up_locked(reason)

    async def _catch_up_locked(self, reason: str) -> int:
        try:
            info = await asyncio.wait_for(self.js.stream_info(subjects.POLICY_STREAM), self.timeout_s)
        except Exception as exc:
            raise UnavailableError(f"cannot read the POLICY stream: {exc!r}") from exc
        last = int(info.state.last_seq or 0)
        if last <= self.version:
            return 0
        updates: list[policy_pb2.PolicyUpdated] = []
        seq = self.version + 1
        while seq <= last:
            try:
                raw = await asyncio.wait_for(
                    self.js.get_msg(subjects.POLICY_STREAM, seq=seq, next=True), self.timeout_s
                )
            except nats.js.errors.NotFoundError:
                break
            except Exception as exc:
                raise UnavailableError(f"cannot read policy update {seq}: {exc!r}") from exc
            update = policy_pb2.PolicyUpdated()
            try:
                update.ParseFromString(raw.data or b"")
            except DecodeError:
                self._report("replication", f"policy update at stream sequence {raw.seq} is unreadable; skipped")
                update = policy_pb2.PolicyUpdated(change=policy_pb2.POLICY_CHANGE_UNSPECIFIED)
            stream_seq = int(raw.seq or seq)
            update.policy_set_version = stream_seq  # the stream sequence is the version
            updates.append(update)
            seq = stream_seq + 1
        if updates:
            self._resyncs.labels(reason).inc()
            self._apply(updates)
            log.info("policy set caught up to version %d (%d updates, %s)", self.version, len(updates), reason)
        return len(updates)

    def _apply(self, updates: list[policy_pb2.PolicyUpdated]) -> None:
        """Fold updates in order into history, then build one new set (compile each policy once)."""
        latest: dict[str, policy_pb2.Policy | None] = {}
        for update in updates:
            if update.change == policy_pb2.POLICY_CHANGE_REGISTERED and update.HasField("policy"):
                self.history.setdefault(update.policy.id, {})[update.policy.version] = update.policy
                latest[update.policy.id] = update.policy
            elif update.change == policy_pb2.POLICY_CHANGE_DELETED:
                latest[update.policy_id] = None
        put: list[CompiledPolicy] = []
        for policy_id, policy in latest.items():
            self.broken.pop(policy_id, None)
            if policy is not None:
                put.append(self._compile(policy))
        removed = [policy_id for policy_id, policy in latest.items() if policy is None]
        self.current = self.current.replace(updates[-1].policy_set_version, put=put, remove=removed)
        self._applied.inc(len(updates))
        self._version_gauge.set(self.version)
        self._policies_gauge.set(len(self.current.policies))

    def _compile(self, policy: policy_pb2.Policy) -> CompiledPolicy:
        try:
            return compile_stored(policy)
        except DocumentError as exc:
            problem = f"policy {policy.id} v{policy.version} cannot be compiled here: {exc}"
            self.broken[policy.id] = problem
            self._report("replication", problem + "; it denies everything until fixed")
            return deny_everything(policy, problem)

    def _report(self, component: str, message: str) -> None:
        log.error("%s", message)
        self._on_error(component, message)

    async def run_resync(self, interval_s: float) -> None:
        """Background task: compare with the stream now and then, so no missed update lingers."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.catch_up("periodic")
            except SymbiError as exc:
                log.warning("policy resync failed: %s", exc)

    # Writing --------------------------------------------------------------------

    async def register(self, compiled: CompiledPolicy, *, expected_version: int = 0, created_by: str = "") -> Change:
        """Make ``compiled`` the current version of its policy (a no-op if the text is unchanged)."""
        async with self._lock:
            for _ in range(MAX_WRITE_ATTEMPTS):
                await self._catch_up_locked("write")
                current = self.current.policies.get(compiled.id)
                _check_expected(compiled.id, current, expected_version)
                if current is not None and current.policy.source_sha256 == compiled.policy.source_sha256:
                    return Change(current.policy, self.version, unchanged=True)
                policy = policy_pb2.Policy()
                policy.CopyFrom(compiled.policy)
                policy.version = max(self.history.get(compiled.id, {0: None})) + 1
                policy.created_by = created_by
                policy.created_at.FromDatetime(dt.datetime.now(dt.UTC))
                update = policy_pb2.PolicyUpdated(
                    change=policy_pb2.POLICY_CHANGE_REGISTERED, policy_id=policy.id, policy=policy
                )
                if await self._append(update):
                    return Change(policy, self.version)
            raise UnavailableError(f"could not register {compiled.id}: too many concurrent policy changes")

    async def delete(self, policy_id: str, *, expected_version: int = 0) -> Change:
        async with self._lock:
            for _ in range(MAX_WRITE_ATTEMPTS):
                await self._catch_up_locked("write")
                current = self.current.policies.get(policy_id)
                if current is None:
                    raise NotFoundError(f"no policy {policy_id!r}")
                _check_expected(policy_id, current, expected_version)
                update = policy_pb2.PolicyUpdated(change=policy_pb2.POLICY_CHANGE_DELETED, policy_id=policy_id)
                if await self._append(update):
                    return Change(current.policy, self.version)
            raise UnavailableError(f"could not delete {policy_id}: too many concurrent policy changes")

    async def _append(self, update: policy_pb2.PolicyUpdated) -> bool:
        """Append at exactly version+1; False if another replica got there first."""
        base = self.version
        update.previous_policy_set_version = base
        update.policy_set_version = base + 1
        update.origin = self.instance_id
        update.time.GetCurrentTime()
        headers = {EXPECTED_LAST_SEQ_HEADER: str(base)}
        try:
            ack = await self.js.publish(
                subjects.POLICY_LOG, update.SerializeToString(), timeout=self.timeout_s, headers=headers
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                log.info("policy set moved on past %d while writing; retrying", base)
                return False
            raise UnavailableError(f"cannot append to the POLICY stream: {exc}") from exc
        except Exception as exc:
            raise UnavailableError(f"cannot append to the POLICY stream: {exc!r}") from exc
        if int(ack.seq) != base + 1:  # pragma: no cover - the header makes this impossible
            raise UnavailableError(f"POLICY stream sequence {ack.seq} != expected {base + 1}")
        self._apply([update])
        try:
            await self.nc.publish(subjects.POLICY_UPDATED, update.SerializeToString())
        except Exception as exc:  # stored already: the other replicas' periodic check will find it
            log.warning("policy update %d stored but not broadcast: %r", update.policy_set_version, exc)
        return True

    def get(self, policy_id: str, version: int = 0) -> policy_pb2.Policy:
        if version == 0:
            current = self.current.policies.get(policy_id)
            if current is None:
                raise NotFoundError(f"no policy {policy_id!r}")
            return current.policy
        found = self.history.get(policy_id, {}).get(version)
        if found is None:
            raise NotFoundError(f"no version {version} of policy {policy_id!r}")
        return found


def _check_expected(policy_id: str, current: CompiledPolicy | None, expected: int) -> None:
    if expected and (current.version if current else 0) != expected:
        have = current.version if current else 0
        raise ConflictError(f"policy {policy_id} is at version {have}, not {expected}")


def deny_everything(policy: policy_pb2.Policy, problem: str) -> CompiledPolicy:
    """A stand-in for a policy this replica cannot compile: one deny rule on every action."""
    spec = RuleSpec(name="unreadable", effect="deny", actions=["*"], reason=problem)
    rule = CompiledRule(
        policy_id=policy.id,
        policy_version=policy.version,
        policy_priority=1000,
        name="unreadable",
        position=0,
        spec=spec,
        rule_type=policy_pb2.POLICY_TYPE_ACCESS_CONTROL,
        effect=policy_pb2.RULE_EFFECT_DENY,
        actions=ALL_ACTIONS,
        match=lambda _facts: True,
        obligations=None,
        reason=problem,
        uses_time=False,
    )
    return CompiledPolicy(policy, (rule,), 0.0)
