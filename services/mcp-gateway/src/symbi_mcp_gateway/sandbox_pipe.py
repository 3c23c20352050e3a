"""A sandboxed stdio MCP server: a sandbox session on an orchestrator, spoken to over NATS.

The gateway never touches Docker. It asks the orchestrator of ``[mcp].sandbox_node``
to open a session (``symbi.sandbox.<node>.session.open``): the server's command in a
hardened container of the required tier, with the orchestrator's Python packages
mounted read-only (the ``mcp`` SDK, nothing pulled), a Python script, when the
command names one that exists on the gateway's host (relative to the server's ``cwd``),
mounted as ``/symbi/task/script.py``,
and each of the server's ``sandbox_mounts`` read-only at ``/mnt/symbi/<n>`` (command
arguments under a mounted directory are rewritten to the path inside).

Bytes for the server's stdin are requests on the session's stdin subject, each
acknowledged once written, so they arrive in order and a dead session is noticed at
once; the server's output comes back as numbered ``SessionOutput`` messages (a gap
means output was lost and ends the connection). The lease is renewed while the
connection lives; if the gateway dies, the orchestrator removes the container when
the lease lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections import deque
from pathlib import Path

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from symbi_common import natsio, subjects
from symbi_common.errors import FailedPreconditionError, SymbiError
from symbi_common.ids import new_id
from symbi_common.settings import McpServerConfig, McpSettings
from symbi_common.supervisor import Supervisor
from symbi_mcp_gateway.lines import BytePipe
from symbi_proto.v1 import session_pb2

log = logging.getLogger(__name__)

STDERR_TAIL = 4096
OPEN_TIMEOUT_S = 60.0
SCRIPT_PATH = "/symbi/task/script.py"
MOUNT_DIR = "/mnt/symbi"


def local_node(configured: str) -> str:
    """This host's node name, by the orchestrator's rule (host name, other characters as '-')."""
    raw = configured or socket.gethostname()
    return subjects.token(re.sub(r"[^A-Za-z0-9_-]", "-", raw).strip("-"))


class SessionPipe:
    def __init__(self, nc: Client, node: str, session_id: str, request_timeout_s: float) -> None:
        self.nc = nc
        self.node = node
        self.session_id = session_id
        self.timeout_s = request_timeout_s
        self.info = session_pb2.SandboxSession()
        self._queue: asyncio.Queue[session_pb2.SessionOutput] = asyncio.Queue()
        self._next = 1
        self._end = ""
        self._stderr: deque[str] = deque(maxlen=64)
        self._sub: Subscription | None = None
        self._tasks = Supervisor(on_failure=lambda what, exc: log.debug("%s: %r", what, exc))

    async def _on_output(self, msg: Msg) -> None:
        chunk = session_pb2.SessionOutput()
        try:
            chunk.ParseFromString(msg.data)
        except DecodeError:
            chunk = session_pb2.SessionOutput(ended=True, detail="unreadable output message")
        self._queue.put_nowait(chunk)

    async def open(self, request: session_pb2.OpenSessionRequest, lease_s: float) -> None:
        self._sub = await self.nc.subscribe(subjects.sandbox_session_output(self.node, self.session_id),
                                            cb=self._on_output)  # fmt: skip
        try:
            self.info = await natsio.request(self.nc, subjects.sandbox_session(self.node, "open"), request,
                                             session_pb2.SandboxSession, timeout=OPEN_TIMEOUT_S)  # fmt: skip
        except BaseException:
            await self._sub.unsubscribe()
            raise
        self._tasks.spawn(self._renew(lease_s), name=f"lease-{self.session_id}")

    async def _renew(self, lease_s: float) -> None:
        renew = session_pb2.RenewSessionRequest(session_id=self.session_id)
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                await natsio.request(self.nc, subjects.sandbox_session(self.node, "renew"), renew,
                                     session_pb2.SandboxSession, timeout=self.timeout_s)  # fmt: skip
            except SymbiError as exc:
                log.warning("cannot renew sandbox session %s: %s", self.session_id, exc)

    async def read(self) -> bytes:
        while not self._end:
            chunk = await self._queue.get()
            if chunk.sequence and chunk.sequence != self._next:
                self._end = f"sandbox output lost (expected message {self._next}, got {chunk.sequence})"
                break
            self._next += 1
            if chunk.ended:
                tail = self._stderr[-1] if self._stderr else ""
                self._end = (chunk.detail or "the sandboxed server ended") + (f": {tail}" if tail else "")
                break
            if chunk.stream == 2:
                self._stderr.extend(chunk.data.decode("utf-8", "replace").splitlines())
                continue
            if chunk.data:
                return chunk.data
        return b""

    async def write(self, data: bytes) -> None:
        subject = self.info.stdin_subject or subjects.sandbox_session_stdin(self.node, self.session_id)
        message = session_pb2.SessionInput(session_id=self.session_id, data=data)
        await natsio.request(self.nc, subject, message, session_pb2.SessionInputAck, timeout=self.timeout_s)

    async def ended(self) -> str:
        return self._end or "the sandboxed server ended"

    async def close(self) -> None:
        await self._tasks.aclose(1.0)
        close = session_pb2.CloseSessionRequest(session_id=self.session_id)
        close.grace_period.FromSeconds(2)
        with contextlib.suppress(SymbiError):
            await natsio.request(self.nc, subjects.sandbox_session(self.node, "close"), close,
                                 session_pb2.CloseSessionResponse, timeout=self.timeout_s + 10)  # fmt: skip
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()


class SessionOpener:
    """Opens sandbox sessions for stdio servers (``connection.PipeOpener``)."""

    def __init__(self, nc: Client, settings: McpSettings, node: str, owner: str, request_timeout_s: float) -> None:
        self.nc = nc
        self.settings = settings
        self.node = node
        self.owner = owner
        self.timeout_s = request_timeout_s

    def request(self, config: McpServerConfig, tier: int, session_id: str) -> session_pb2.OpenSessionRequest:
        command = list(config.command)
        req = session_pb2.OpenSessionRequest(session_id=session_id, owner=self.owner, python_packages=True)
        req.tier = tier  # type: ignore[assignment]
        req.limits.memory_mb = config.sandbox_memory_mb
        req.limits.cpu_cores = config.sandbox_cpu_cores
        req.spec.image = config.sandbox_image
        req.spec.env.update(config.env)
        req.labels["symbi.mcp.server"] = config.name
        base = config.cwd or Path.cwd()  # a relative script is where the server would run: its cwd
        script_arg = next((a for a in command[1:] if a.endswith(".py") and (base / a).is_file()), None)
        if script_arg is not None:
            req.spec.script = (base / script_arg).read_text(encoding="utf-8")
            command = [SCRIPT_PATH if a == script_arg else a for a in command]
            if "python" in Path(command[0]).name:
                command[0] = "python3"  # the host's interpreter path means nothing in the image
        for index, mount in enumerate(config.sandbox_mounts):
            inside = f"{MOUNT_DIR}/{index}"
            req.mounts.add(host_path=str(mount), container_path=inside)
            command = [inside + a[len(str(mount)) :] if a == str(mount) or a.startswith(f"{mount}/") else a
                       for a in command]  # fmt: skip
        req.spec.entrypoint.extend(command)
        req.lease.FromNanoseconds(int(self.settings.sandbox_lease_s * 1e9))
        return req

    async def __call__(self, config: McpServerConfig, tier: int) -> BytePipe:
        session_id = new_id()
        pipe = SessionPipe(self.nc, self.node, session_id, self.timeout_s)
        try:
            await pipe.open(self.request(config, tier, session_id), self.settings.sandbox_lease_s)
        except SymbiError as exc:
            raise FailedPreconditionError(f"{config.name}: no sandbox on node {self.node}: {exc.message}") from None
        return pipe
