"""``symbi tools``: MCP tools through the gateway, and SchemaPin keys and signatures for publishers.

Through the gateway (``--nats-url``, else the running ``symbi up``, else ``[nats].url``):
``list``, ``servers``, ``call``, ``resources``, ``read``, ``verify``, ``pins``, ``pin``,
``unpin``. Offline, for whoever publishes tools: ``keygen`` (an ECDSA P-256 key pair and
its ``.well-known/schemapin.json``) and ``sign`` (signatures of a server's tools, both
coverages, as a signatures file or as ``_meta`` blocks). Exit 1 when a call fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from nats.aio.client import Client

from symbi_cli import subcommands
from symbi_common.errors import InvalidArgumentError
from symbi_common.tools_client import ToolsClient
from symbi_proto.v1 import tools_pb2

EXIT_OK, EXIT_FAILED = 0, 1
T = tools_pb2


def register(commands: Any) -> None:
    parser, add = subcommands.group(
        commands,
        "tools",
        "MCP tools: list, call, verify and pin; keys and signatures for publishers",
        "Use MCP tools through the gateway (every call is policy-checked and audited), inspect and re-pin "
        "their SchemaPin keys, or (offline) make keys and sign a server's tools. See docs/mcp.md.",
    )
    parser.add_argument("--nats-url", help="NATS of the gateway (default: the running `symbi up`)")
    parser.add_argument("--as", dest="actor", default="cli", help="who asks (the policy subject when no --agent)")
    parser.add_argument("--role", action="append", default=[], help="a role of who asks (repeatable), for policy")
    parser.add_argument("--agent", default="", help="act as this agent (its capabilities decide)")
    listing = add("list", "tools offered (with --all, also those refused, and why)", _list)
    listing.add_argument("--server", default="")
    listing.add_argument("--all", action="store_true", help="include tools that are not offered")
    add("servers", "MCP servers and their state", _servers)
    call = add("call", "call a tool; prints its result, exit 1 if it failed", _call)
    call.add_argument("server")
    call.add_argument("tool")
    call.add_argument("arguments", nargs="?", default="{}", help="arguments as a JSON object (default {})")
    call.add_argument("--timeout", type=float, default=0, help="seconds (default: the gateway's)")
    call.add_argument("--max-bytes", type=int, default=0, help="cap on the result (default: the gateway's)")
    resources = add("resources", "resources of the servers", _resources)
    resources.add_argument("--server", default="")
    read = add("read", "read a resource", _read)
    read.add_argument("server")
    read.add_argument("uri")
    verify = add("verify", "list and verify the tool's server again now", _verify)
    verify.add_argument("server")
    verify.add_argument("tool")
    pins = add("pins", "persisted key pins", _pins)
    pins.add_argument("--server", default="")
    pin = add("pin", "pin (or re-pin) the key the tool's domain publishes now; its signature must verify", _pin)
    pin.add_argument("server")
    pin.add_argument("tool")
    pin.add_argument("--fingerprint", default="", help="the key expected (sha256:...); required to replace a pin")
    unpin = add("unpin", "remove a tool's pin (the next verification pins on first use again)", _unpin)
    unpin.add_argument("server")
    unpin.add_argument("tool")
    keygen = add("keygen", "make an ECDSA P-256 key pair and its .well-known/schemapin.json", _keygen)
    keygen.add_argument("directory", type=Path)
    keygen.add_argument("--developer", default="", help="developer_name in the discovery document")
    sign = add("sign", "sign every tool of an MCP server (asked with the mcp SDK) or of a JSON file", _sign)
    sign.add_argument("--key", type=Path, required=True, help="private key (PEM)")
    source = sign.add_mutually_exclusive_group(required=True)
    source.add_argument("--command", help="a stdio server's command line")
    source.add_argument("--url", help="a streamable HTTP server's URL")
    source.add_argument("--tools", type=Path, help="a JSON file: a tools/list result or a list of tools")
    sign.add_argument("--meta", action="store_true", help="print the _meta block of each tool instead")
    sign.add_argument("--out", type=Path, help="write the signatures file here")


def _client(nc: Client, args: argparse.Namespace) -> ToolsClient:
    return ToolsClient(nc, timeout_s=30.0, agent_id=args.agent, actor="" if args.agent else args.actor,
                       roles=args.role)  # fmt: skip


def _print(message: Any) -> None:
    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2))


def _status(value: int) -> str:
    return T.VerificationStatus.Name(value).removeprefix("VERIFICATION_STATUS_").lower()  # type: ignore[arg-type]


def _list(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        reply = await _client(nc, args).list_tools(args.server, include_unverified=args.all)
        if args.json:
            _print(reply)
            return EXIT_OK
        for tool in reply.tools:
            v = tool.verification
            flag = "offered" if v.offered else "REFUSED"
            print(f"{tool.server}/{tool.name}: {_status(v.status)} ({flag}) {tool.description[:70]}")
            if not v.offered or v.status != T.VERIFICATION_STATUS_VERIFIED:
                print(f"    {v.detail}")
        for server in reply.unavailable_servers:
            print(f"{server.name}: unavailable: {server.detail}")
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _servers(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        reply = await _client(nc, args).servers()
        if args.json:
            _print(reply)
            return EXIT_OK
        for s in reply.servers:
            state = T.McpServerState.Name(s.state).removeprefix("MCP_SERVER_STATE_").lower()
            where = s.url or shlex.join(s.command)
            boxed = " sandboxed" if s.sandboxed else ""
            print(f"{s.name}: {state}{boxed}, {s.tool_count} tools offered, {s.refused_tool_count} refused ({where})")
            if s.state != T.MCP_SERVER_STATE_CONNECTED:
                print(f"    {s.detail}")
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _call(args: argparse.Namespace) -> int:
    try:
        arguments = json.loads(args.arguments)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"arguments are not JSON: {exc}") from None

    async def work(nc: Client) -> int:
        result = await _client(nc, args).call(args.server, args.tool, arguments, timeout_s=args.timeout,
                                              max_result_bytes=args.max_bytes)  # fmt: skip
        if args.json:
            _print(result)
        elif result.HasField("error"):
            print(f"refused: {result.error.code}: {result.error.message}", file=sys.stderr)
        else:
            for block in result.content:
                print(block.text if block.type == "text" else f"[{block.type} {block.mime_type} {block.uri}]")
            if result.truncated:
                print("[result cut to the size cap]", file=sys.stderr)
        return EXIT_FAILED if result.is_error else EXIT_OK

    return subcommands.with_nats(args, work)


def _resources(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        reply = await _client(nc, args).list_resources(args.server)
        if args.json:
            _print(reply)
        else:
            for r in reply.resources:
                print(f"{r.server} {r.uri} {r.mime_type} {r.name}")
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _read(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        reply = await _client(nc, args).read_resource(args.server, args.uri)
        if args.json or reply.HasField("error"):
            _print(reply)
            return EXIT_FAILED if reply.HasField("error") else EXIT_OK
        for part in reply.contents:
            print(part.text if part.text else f"[{len(part.blob)} bytes of {part.mime_type}]")
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _verify(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        reply = await _client(nc, args).verify(args.server, args.tool)
        v = reply.tool.verification
        if args.json:
            _print(reply)
        else:
            print(f"{args.server}/{args.tool}: {_status(v.status)} ({'offered' if v.offered else 'refused'})")
            print(f"    key {v.key_fingerprint or '-'} of {v.domain or '-'}; covers {v.coverage or '-'}; {v.detail}")
        return EXIT_OK if v.offered else EXIT_FAILED

    return subcommands.with_nats(args, work)


def _pins(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        reply = await _client(nc, args).pins(args.server)
        if args.json:
            _print(reply)
        else:
            for p in reply.pins:
                print(f"{p.server}/{p.tool}: {p.key_fingerprint} of {p.domain} by {p.pinned_by} ({p.coverage})")
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _pin(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        reply = await _client(nc, args).pin(args.server, args.tool, args.fingerprint)
        if args.json:
            _print(reply)
        else:
            print(f"pinned {args.server}/{args.tool} to {reply.pin.key_fingerprint}: "
                  f"{_status(reply.tool.verification.status)}")  # fmt: skip
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _unpin(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        reply = await _client(nc, args).unpin(args.server, args.tool)
        print("removed" if reply.removed else "there was no pin")
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from symbi_mcp_gateway import signatures

    key = ec.generate_private_key(ec.SECP256R1())
    args.directory.mkdir(parents=True, exist_ok=True)
    private = args.directory / "schemapin-private.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    pem = signatures.public_pem(key.public_key())
    (args.directory / "schemapin-public.pem").write_text(pem)
    document = {"schema_version": "1.2", "developer_name": args.developer, "public_key_pem": pem, "revoked_keys": []}
    (args.directory / "schemapin.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"key {signatures.fingerprint(key.public_key())} written to {args.directory}")
    print("publish schemapin.json at https://<your domain>/.well-known/schemapin.json; keep the private key secret")
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    from symbi_mcp_gateway import signatures

    key = signatures.load_private_key(args.key.read_text())
    tools = _tools_from_file(args.tools) if args.tools else asyncio.run(_tools_from_server(args.command, args.url))
    print(f"signing {len(tools)} tools", file=sys.stderr)
    signed = {name: signatures.sign_tool(tool, key) for name, tool in sorted(tools.items())}
    if args.meta:
        text = json.dumps({name: {signatures.META_KEY: block} for name, block in signed.items()}, indent=2)
    else:
        text = json.dumps({"tools": signed}, indent=2)
    subcommands.save_or_print(text, args.out, "signatures")
    return EXIT_OK


def _tools_from_file(path: Path) -> dict[str, dict[str, Any]]:
    data = json.loads(path.read_text())
    listed = data.get("tools", data) if isinstance(data, dict) else data
    if not isinstance(listed, list):
        raise InvalidArgumentError(f"{path}: expected a tools/list result or a list of tools")
    return {str(t["name"]): {k: v for k, v in t.items() if k != "_meta"} for t in listed}


async def _tools_from_server(command: str | None, url: str | None) -> dict[str, dict[str, Any]]:
    from mcp import Client as McpClient
    from mcp.client.stdio import StdioServerParameters

    from symbi_mcp_gateway.catalog import wire_form

    if command:
        argv = shlex.split(command)
        target: Any = StdioServerParameters(command=argv[0], args=argv[1:])
    else:
        target = url
    out: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(60):
        async with McpClient(target, cache=None, read_timeout_seconds=30) as client:
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                for tool in page.tools:
                    wire = wire_form(tool)
                    wire.pop("_meta", None)
                    out[tool.name] = wire
                cursor = page.next_cursor
                if cursor is None:
                    return out
