"""A local stdio MCP server: a child process in its own process group, stopped for sure.

The child gets only the configured environment (plus ``PATH``, ``HOME`` and ``LANG`` of
the gateway, so a command name resolves), never the gateway's own settings or
secrets. stderr is drained continuously into a bounded tail, reported when the
server ends. ``close`` follows the MCP shutdown order: close stdin, wait, SIGTERM
the whole process group, wait, SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from symbi_common.errors import FailedPreconditionError
from symbi_common.supervisor import Supervisor
from symbi_mcp_gateway.lines import READ_CHUNK

log = logging.getLogger(__name__)

INHERITED = ("PATH", "HOME", "LANG")
STDERR_TAIL = 4096
STOP_WAIT_S = 1.0


class ProcessPipe:
    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self._stderr: deque[bytes] = deque()
        self._stderr_size = 0
        self._tasks = Supervisor(on_failure=lambda what, exc: log.debug("%s: %r", what, exc))
        self._tasks.spawn(self._drain_stderr(), name=f"stderr-{name}")

    @classmethod
    async def start(cls, name: str, command: Sequence[str], env: Mapping[str, str], cwd: Path | None) -> ProcessPipe:
        environment = {k: os.environ[k] for k in INHERITED if k in os.environ} | dict(env)
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=environment,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise FailedPreconditionError(f"cannot start {command[0]!r}: {exc.strerror or exc}") from None
        return cls(process, name)

    async def _drain_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        while chunk := await stream.read(READ_CHUNK):
            self._stderr.append(chunk)
            self._stderr_size += len(chunk)
            while self._stderr_size > STDERR_TAIL and len(self._stderr) > 1:
                self._stderr_size -= len(self._stderr.popleft())

    async def read(self) -> bytes:
        stream = self.process.stdout
        assert stream is not None
        return await stream.read(READ_CHUNK)

    async def write(self, data: bytes) -> None:
        stream = self.process.stdin
        assert stream is not None
        stream.write(data)
        await stream.drain()

    async def ended(self) -> str:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), STOP_WAIT_S)
        code = self.process.returncode
        if code is None:
            return "the server closed its output"
        tail = b"".join(self._stderr)[-STDERR_TAIL:].decode("utf-8", "replace").strip()
        last = tail.splitlines()[-1] if tail else ""
        return f"the server exited with {code}" + (f": {last}" if last else "")

    async def close(self) -> None:
        process = self.process
        try:
            if process.stdin is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    process.stdin.close()
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, sig)
                try:
                    await asyncio.wait_for(process.wait(), STOP_WAIT_S)
                    break
                except TimeoutError:
                    continue
            if process.returncode is None:
                log.error("MCP server %s (pid %d) survived SIGKILL", self.name, process.pid)
            await self._tasks.aclose(1.0)
        finally:
            # Whatever interrupted the steps above (a second cancellation at shutdown), the process is
            # killed if it still runs and its pipes released now, not when the transport is collected,
            # perhaps after the event loop is gone.
            transport = getattr(process, "_transport", None)
            if transport is not None:
                transport.close()
