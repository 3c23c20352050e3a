"""``symbi api-key``: create, list and revoke the HTTP API's keys.

Works on the key store itself (Redis: ``--redis-url``, else the running ``symbi up``,
else ``[redis].url``), so an operator of the stack needs no key to make the first
one. ``create`` prints the key once (or writes it to ``--out`` with mode 0600); only
its salted digest is stored. Every API replica sees a change at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from symbi_api.keys import SCOPES, ApiKey, KeySpec, KeyStore
from symbi_cli import subcommands
from symbi_cli.stack import running_value
from symbi_common import redisio


def register(commands: Any) -> None:
    parser, add = subcommands.group(
        commands,
        "api-key",
        "create, list and revoke HTTP API keys",
        "Manage the HTTP API's keys in its key store (Redis). Scopes: "
        + "; ".join(f"{name} ({what})" for name, what in SCOPES.items())
        + "; <group>:* grants a whole group. See docs/api.md.",
    )
    parser.add_argument("--redis-url", help="the key store (default: the running `symbi up`, else [redis].url)")
    create = add("create", "create a key and print it (shown this once)", _create)
    create.add_argument("name", help="the principal the key acts as (policy's subject.id)")
    create.add_argument("--scope", action="append", required=True, help="a scope (repeatable), e.g. agents:read")
    create.add_argument("--role", action="append", default=[], help="a role for policy (repeatable)")
    create.add_argument("--kind", choices=("user", "service"), default="user")
    create.add_argument("--tenant", default="", help="confine the key to one tenant")
    create.add_argument("--rate-limit", type=int, default=0, help="requests per minute (0: the configured default)")
    create.add_argument("--description", default="")
    create.add_argument("--out", type=Path, help="write the key to this file (mode 0600) instead of printing it")
    add("list", "list keys (ids, principals, scopes; never the keys)", _list)
    revoke = add("revoke", "revoke a key; every API replica refuses it from then on", _revoke)
    revoke.add_argument("key_id")


def _with_store(args: argparse.Namespace, work: Any) -> int:
    from symbi_cli.main import load

    settings = load(args)
    url = args.redis_url or running_value(args.state_dir or settings.runtime.state_dir, "redis_url")
    url = url or settings.redis.url

    async def run() -> int:
        client = await redisio.connect(url, deadline_s=5.0)
        try:
            result: int = await work(KeyStore(client))
            return result
        finally:
            await client.aclose()

    return asyncio.run(run())


def _describe(key: ApiKey) -> str:
    state = "revoked" if key.revoked else "active"
    tenant = f" tenant={key.tenant}" if key.tenant else ""
    roles = ",".join(key.roles) or "-"
    return f"{key.key_id}  {state:<8} {key.name} ({key.kind}{tenant}) scopes={','.join(key.scopes)} roles={roles}"


def _create(args: argparse.Namespace) -> int:
    spec = KeySpec(args.name, args.scope, args.kind, args.role, args.tenant, args.rate_limit, args.description)

    async def work(store: KeyStore) -> int:
        record, token = await store.create(spec.checked(), created_by=f"cli:{os.environ.get('USER', '')}")
        if args.out:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(token + "\n")
            print(f"key {record.key_id} for {record.name} written to {args.out} (mode 0600)")
        elif args.json:
            print(json.dumps({"key": token, **record.public()}, indent=2))
        else:
            print(token)
            print(f"key {record.key_id} for {record.name}: shown this once, keep it secret", file=sys.stderr)
        return 0

    return _with_store(args, work)


def _list(args: argparse.Namespace) -> int:
    async def work(store: KeyStore) -> int:
        keys = await store.list()
        if args.json:
            print(json.dumps([k.public() for k in keys], indent=2))
        else:
            for key in keys:
                print(_describe(key))
            print(f"{len(keys)} keys")
        return 0

    return _with_store(args, work)


def _revoke(args: argparse.Namespace) -> int:
    async def work(store: KeyStore) -> int:
        key = await store.revoke(args.key_id, by=f"cli:{os.environ.get('USER', '')}")
        print(f"revoked {_describe(key)}")
        return 0

    return _with_store(args, work)
