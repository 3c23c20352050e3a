"""Sandbox sessions over NATS: long-lived sandboxed processes with stdin and output subjects.

Served on ``symbi.sandbox.<node>.session.open|renew|close`` (queue group ``<node>``)
and, per session, ``symbi.sandbox.<node>.session.<id>.stdin`` (request-reply, each
write acknowledged once written). Output is published on
``symbi.sandbox.<node>.session.<id>.output`` as ``SessionOutput`` messages numbered
from 1 by one publisher per session, so they leave in order; the last one has
``ended`` set, with the exit code and why.

A session ends when its process exits, when it is closed, when its lease (renewed by
``renew`` and by every stdin write) lapses, when its ``execution_timeout`` passes, or
when the orchestrator stops; in every case the container is removed. At most
``[sandbox].max_sessions`` run at once, and their memory and CPU are counted against
what the worker offers to tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from symbi_common import natsio, subjects
from symbi_common.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError, SymbiError
from symbi_common.settings import SandboxSettings
from symbi_common.supervisor import Supervisor
from symbi_proto.v1 import common_pb2, session_pb2
from symbi_sandbox_orchestrator.docker_runner import DockerRunner
from symbi_sandbox_orchestrator.docker_sessions import DockerSession, start_session
from symbi_sandbox_orchestrator.metrics import SandboxMetrics

log = logging.getLogger(__name__)

S = session_pb2
DEFAULT_LEASE_S = 30.0
MAX_LEASE_S = 3600.0
MAX_INPUT_BYTES = 4 * 1024 * 1024
SWEEP_S = 1.0


@dataclass
class Session:
    info: session_pb2.SandboxSession
    request: session_pb2.OpenSessionRequest
    lease_s: float
    expires: float
    deadline: float
    outbox: asyncio.Queue[session_pb2.SessionOutput] = field(default_factory=asyncio.Queue)
    sequence: int = 0
    docker: DockerSession | None = None
    stdin: Subscription | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class SessionManager:
    def __init__(
        self,
        nc: Client,
        node: str,
        runner: DockerRunner,
        settings: SandboxSettings,
        *,
        on_change: Callable[[], None] = lambda: None,
        metrics: SandboxMetrics | None = None,
    ) -> None:
        self.nc = nc
        self.metrics = metrics or SandboxMetrics(None)
        self.node = subjects.token(node)
        self.runner = runner
        self.settings = settings
        self.on_change = on_change
        self.sessions: dict[str, Session] = {}
        self._tasks = Supervisor(on_failure=lambda name, exc: log.warning("%s: %r", name, exc))

    def reserved(self) -> list[common_pb2.ResourceLimits]:
        """Limits of the sessions running here (the worker counts them against its capacity)."""
        return [s.request.limits for s in self.sessions.values() if not s.ended.is_set()]

    async def register(self, serve: Callable[..., object]) -> None:
        for operation, request_type, handler in (
            ("open", S.OpenSessionRequest, self.open),
            ("renew", S.RenewSessionRequest, self.renew),
            ("close", S.CloseSessionRequest, self.close),
        ):
            subject = subjects.sandbox_session(self.node, operation)
            await serve(subject, request_type, handler, queue=self.node, concurrent=True)  # type: ignore[misc]
        self._tasks.spawn(self._sweep(), name="session-leases")

    # Requests -----------------------------------------------------------------------------

    async def open(self, req: session_pb2.OpenSessionRequest, _: natsio.RequestMeta) -> Message:
        known = self.sessions.get(req.session_id)
        if known is not None:
            return known.info  # a retried open
        try:
            lease = self._admit(req)
        except SymbiError:
            self.metrics.refused("session", req.tier)
            raise
        lifetime = req.limits.execution_timeout.ToNanoseconds() / 1e9 if req.limits.HasField("execution_timeout") else 0
        now = time.monotonic()
        info = S.SandboxSession(
            session_id=req.session_id,
            node=self.node,
            tier=req.tier,
            state=S.SESSION_STATE_RUNNING,
            stdin_subject=subjects.sandbox_session_stdin(self.node, req.session_id),
            output_subject=subjects.sandbox_session_output(self.node, req.session_id),
        )
        info.lease.FromNanoseconds(int(lease * 1e9))
        session = Session(info, req, lease, now + lease, now + lifetime if lifetime else float("inf"))
        self.sessions[req.session_id] = session
        started = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
            docker = await asyncio.to_thread(
                start_session, self.runner, req, self.settings.session_mount_roots, loop,
                lambda stream, data: self._emit(session, stream=stream, data=data),
                lambda code, detail: self._ended(session, code, detail),
            )  # fmt: skip
        except BaseException:
            del self.sessions[req.session_id]
            self.metrics.failed("session", req.tier)
            raise
        self.metrics.started("session", req.tier, time.monotonic() - started)
        session.docker = docker
        info.sandbox_id, info.runtime = docker.sandbox_id, docker.runtime
        info.started_at.GetCurrentTime()
        self._tasks.spawn(self._publish(session), name=f"session-output-{req.session_id}")
        session.stdin = await natsio.serve(self.nc, info.stdin_subject, S.SessionInput, self._stdin_handler(session))
        self.on_change()
        log.info("session %s started (%s, %s) for %s", req.session_id, docker.runtime, docker.sandbox_id, req.owner)
        return info

    def _admit(self, req: session_pb2.OpenSessionRequest) -> float:
        """Check an open request against this node's limits; returns the lease in seconds."""
        subjects.token(req.session_id)
        if len(req.session_id) > 128:
            raise InvalidArgumentError("session_id is longer than 128 characters")
        running = sum(1 for s in self.sessions.values() if not s.ended.is_set())
        if running >= self.settings.max_sessions:
            raise ResourceExhaustedError(f"node {self.node} runs {running} sessions, its maximum")
        lease = req.lease.ToNanoseconds() / 1e9 if req.HasField("lease") else DEFAULT_LEASE_S
        if not 1.0 <= lease <= MAX_LEASE_S:
            raise InvalidArgumentError(f"lease must be between 1s and {MAX_LEASE_S:g}s")
        return lease

    def _stdin_handler(self, session: Session) -> natsio.Handler[session_pb2.SessionInput]:
        async def handle(req: session_pb2.SessionInput, _: natsio.RequestMeta) -> Message:
            if len(req.data) > MAX_INPUT_BYTES:
                raise InvalidArgumentError(f"stdin writes are limited to {MAX_INPUT_BYTES} bytes")
            docker = session.docker
            if docker is None or session.ended.is_set():
                raise FailedPreconditionError(f"session {session.info.session_id} has ended: {session.info.detail}")
            session.expires = time.monotonic() + session.lease_s
            return S.SessionInputAck(offset=await docker.write(req.data, req.eof))

        return handle

    async def renew(self, req: session_pb2.RenewSessionRequest, _: natsio.RequestMeta) -> Message:
        session = self.sessions.get(req.session_id)
        if session is None:
            raise FailedPreconditionError(f"no session {req.session_id} on node {self.node}")
        if session.ended.is_set():
            raise FailedPreconditionError(f"session {req.session_id} has ended: {session.info.detail}")
        session.expires = time.monotonic() + session.lease_s
        return session.info

    async def close(self, req: session_pb2.CloseSessionRequest, _: natsio.RequestMeta) -> Message:
        session = self.sessions.get(req.session_id)
        if session is None:
            return S.CloseSessionResponse(closed=True)
        grace = req.grace_period.ToNanoseconds() / 1e9 if req.HasField("grace_period") else 5.0
        if not await self._stop(session, grace, "closed"):
            error = common_pb2.ErrorDetail(code="unavailable", message="the session's container did not go away")
            return S.CloseSessionResponse(closed=False, error=error)
        return S.CloseSessionResponse(closed=True)

    # Life ---------------------------------------------------------------------------------

    def _emit(self, session: Session, *, stream: int = 1, data: bytes = b"", ended: bool = False,
              exit_code: int = 0, detail: str = "") -> None:  # fmt: skip
        session.sequence += 1
        session.outbox.put_nowait(S.SessionOutput(session_id=session.info.session_id, sequence=session.sequence,
                                                  stream=stream, data=data, ended=ended, exit_code=exit_code,
                                                  detail=detail))  # fmt: skip

    def _ended(self, session: Session, code: int | None, detail: str) -> None:
        session.info.detail = session.info.detail or detail  # why it was stopped, else how it exited
        session.info.state = S.SESSION_STATE_ENDED
        self._emit(session, ended=True, exit_code=code if code is not None else -1, detail=session.info.detail)
        session.ended.set()
        self.on_change()

    async def _publish(self, session: Session) -> None:
        subject = session.info.output_subject
        while True:
            chunk = await session.outbox.get()
            try:
                await self.nc.publish(subject, chunk.SerializeToString())
            except Exception as exc:  # NATS reconnecting: the reader sees the gap and gives up
                log.warning("session %s: output not published: %r", session.info.session_id, exc)
            if chunk.ended:
                break
        if session.stdin is not None:
            with contextlib.suppress(Exception):
                await session.stdin.unsubscribe()
        self.sessions.pop(session.info.session_id, None)

    async def _stop(self, session: Session, grace_s: float, why: str) -> bool:
        if not session.info.detail:
            session.info.detail = why
        docker = session.docker
        if docker is None:
            return True
        gone = await docker.stop(grace_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.ended.wait(), grace_s + 5)
        return gone

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.ended.is_set() or session.docker is None:
                    continue
                if now > session.expires:
                    log.warning("session %s: lease lapsed; removing it", session.info.session_id)
                    self._tasks.spawn(self._stop(session, 0, "lease lapsed"), name="session-stop")
                elif now > session.deadline:
                    self._tasks.spawn(self._stop(session, 0, "execution_timeout passed"), name="session-stop")

    async def drain(self, grace_s: float) -> None:
        """Stop every session (orchestrator shutdown)."""
        await asyncio.gather(
            *(self._stop(s, grace_s, "the orchestrator stopped") for s in list(self.sessions.values()))
        )
        await self._tasks.aclose(grace_s)
