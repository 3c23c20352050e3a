"""Command groups (``symbi policy ...``, ``symbi audit ...``): one parser with actions under it."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from symbi_cli.stack import nats_settings_for
from symbi_common import natsio

Handler = Callable[[argparse.Namespace], int]
Adder = Callable[[str, str, Handler], argparse.ArgumentParser]


def group(commands: Any, name: str, summary: str, description: str) -> tuple[argparse.ArgumentParser, Adder]:
    """The group's parser (with the shared --state-dir and --json) and a function adding one action."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=summary, description=description)
    parser.add_argument("--state-dir", type=Path, help="state directory of the `symbi up` to use")
    parser.add_argument("--json", action="store_true", help="print JSON")
    actions = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)

    def add(action: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        cmd: argparse.ArgumentParser = actions.add_parser(action, help=help_text, description=help_text)
        cmd.set_defaults(handler=handler)
        return cmd

    return parser, add


def save_or_print(text: str, path: Path | None, saved: str) -> None:
    """Write ``text`` to ``path`` and say ``saved``, or print it."""
    if path is None:
        print(text)
        return
    path.write_text(text)
    print(f"{saved} saved to {path}")


def with_nats(args: argparse.Namespace, work: Callable[[Client], Awaitable[int]]) -> int:
    """Run ``work`` with a NATS connection: ``--nats-url``, else the running ``symbi up``, else ``[nats].url``."""
    from symbi_cli.main import load

    settings = load(args)
    nats_settings = nats_settings_for(settings, args.state_dir, args.nats_url or "", connect_timeout_s=5.0)

    async def run() -> int:
        nc = await natsio.connect(nats_settings, "symbi-cli")
        try:
            return await work(nc)
        finally:
            await nc.close()

    return asyncio.run(run())
