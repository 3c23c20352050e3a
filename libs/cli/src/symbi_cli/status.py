"""``symbi status``: health of every service replica, over NATS."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from symbi_cli.stack import nats_settings_for
from symbi_common import catalog, fleet, natsio
from symbi_common.health import is_ready, status_name
from symbi_common.settings import NatsSettings
from symbi_proto.v1 import health_pb2


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "status",
        help="show the health of every service",
        description="Ask every service replica for its health over NATS and print a table. "
        "Finds the NATS of a running `symbi up` through its state file; --nats-url overrides. "
        "Exit 0 when every service has a ready replica, 1 otherwise.",
    )
    parser.add_argument("--nats-url", help="NATS to ask (default: the running `symbi up`, else [nats].url)")
    parser.add_argument("--state-dir", type=Path, help="state directory of the `symbi up` to inspect")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--window", type=float, default=1.0, help="seconds to collect replies (default 1)")
    parser.set_defaults(handler=handle)


async def gather(nats_settings: NatsSettings, window_s: float) -> list[health_pb2.HealthStatus]:
    nc = await natsio.connect(nats_settings, "symbi-status")
    try:
        return await fleet.collect(nc, window_s=window_s, expect=catalog.available())
    finally:
        await nc.close()


def handle(args: argparse.Namespace) -> int:
    from symbi_cli.main import load

    settings = load(args)
    nats_settings = nats_settings_for(settings, args.state_dir, args.nats_url or "", connect_timeout_s=3.0)
    url = nats_settings.url
    replies = asyncio.run(gather(nats_settings, args.window))
    expected = catalog.available()
    ready = {s.service for s in replies if is_ready(s)}
    missing = [name for name in expected if name not in ready]
    if args.json:
        print(json.dumps({"nats_url": url, "missing": missing, "replicas": [
            MessageToDict(s, preserving_proto_field_name=True) for s in replies
        ]}, indent=2))  # fmt: skip
    else:
        print(f"NATS {url}")
        print(f"{'SERVICE':<22}{'STATUS':<11}{'UPTIME':>8}  {'RSS':>7}  DETAIL")
        for s in replies:
            detail = "; ".join(f"{c.name}: {c.detail}" for c in s.components)
            rss = f"{s.resources.memory_rss_bytes / 2**20:.0f}M"
            print(f"{s.service:<22}{status_name(s.status):<11}{s.uptime_seconds:>7.0f}s  {rss:>7}  {detail}")
        for name in missing:
            print(f"{name:<22}{'missing':<11}")
    return 0 if not missing else 1
