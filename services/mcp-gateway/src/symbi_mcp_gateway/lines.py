"""MCP over a byte pipe: newline-delimited JSON-RPC with a size cap, for stdio and sandboxed servers.

The SDK's client drives the protocol; this transport only frames messages. It reads
from a ``BytePipe`` (a local process's stdout, or a sandbox session's output over
NATS), and any of these ends the connection with the reason kept in ``failure``:

- a message longer than ``max_message_bytes`` (nothing past the cap is buffered),
- a line that is not a JSON-RPC message (the MCP stdio transport allows nothing else),
- the pipe ending (the server exited; the pipe says how).

Ending means the read stream closes: every request waiting on the server fails at
once with the SDK's "connection closed" error instead of waiting for its timeout,
and the connection's owner reconnects.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import mcp_types as types
from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
STREAM_BUFFER = 32


class BytePipe(Protocol):
    async def read(self) -> bytes:
        """The next bytes the server wrote; ``b""`` once it has ended."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Stop the server (stdin closed, then terminate, then kill) and release everything."""
        ...

    async def ended(self) -> str:
        """How the server ended (exit code, stderr tail), once its output has ended."""
        ...


@dataclass
class LinkStatus:
    """What happened to one connection's transport (read by the connection after it ends)."""

    failure: str = ""
    closing: bool = False
    """The client is closing the transport itself: the server's end that follows is no failure."""
    closed: anyio.Event = field(default_factory=anyio.Event)
    received_bytes: int = 0


def parse(line: bytes) -> SessionMessage:
    return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))


@asynccontextmanager
async def line_transport(pipe: BytePipe, max_message_bytes: int, status: LinkStatus) -> AsyncIterator[TransportStreams]:
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](STREAM_BUFFER)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](STREAM_BUFFER)

    def fail(reason: str) -> None:
        if not status.failure and not status.closing:
            status.failure = reason
            log.warning("MCP transport closed: %s", reason)

    async def reader() -> None:
        buffer = bytearray()
        try:
            async with read_writer:
                while True:
                    chunk = await pipe.read()
                    if not chunk:
                        fail(await pipe.ended() or "the server closed its output")
                        return
                    status.received_bytes += len(chunk)
                    buffer += chunk
                    while (end := buffer.find(b"\n")) >= 0:
                        line = bytes(buffer[:end]).strip()
                        del buffer[: end + 1]
                        if len(line) > max_message_bytes:
                            fail(f"the server sent a message larger than {max_message_bytes} bytes")
                            return
                        if not line:
                            continue
                        try:
                            message = parse(line)
                        except ValueError as exc:
                            fail(f"the server sent a line that is not JSON-RPC: {_short(line)} ({type(exc).__name__})")
                            return
                        await read_writer.send(message)
                    if len(buffer) > max_message_bytes:
                        fail(f"the server sent a message larger than {max_message_bytes} bytes")
                        return
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        except Exception as exc:  # the pipe failed (NATS gone, process I/O error): the connection ends
            fail(f"reading from the server failed: {exc!r}")
        finally:
            status.closed.set()

    async def writer() -> None:
        try:
            async with write_reader:
                async for message in write_reader:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
                    await pipe.write(data)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        except Exception as exc:
            fail(f"writing to the server failed: {exc!r}")
            await read_writer.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(writer)
        try:
            yield read_stream, write_stream
        finally:
            status.closing = True
            with anyio.CancelScope(shield=True):
                await pipe.close()
                for stream in (read_stream, write_stream, read_writer, write_reader):
                    await stream.aclose()
            tg.cancel_scope.cancel()


def _short(line: bytes) -> str:
    text = line[:80].decode("utf-8", "replace")
    return repr(text + ("..." if len(line) > 80 else ""))
