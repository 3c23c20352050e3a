"""``symbi serve <service>``: run one service in this process (what containers run)."""

from __future__ import annotations

import argparse
from typing import Any

from symbi_common import catalog
from symbi_common.service import run_service


def register(commands: Any) -> None:
    names = catalog.available()
    summaries = catalog.summaries()  # from package metadata: `symbi --help` imports no service
    listing = "\n".join(f"  {name:<22}{summaries.get(name, '')}" for name in names)
    parser = commands.add_parser(
        "serve",
        help="run one service in the foreground",
        description="Run one Symbi service until SIGTERM/SIGINT. It connects to NATS (SYMBI_NATS_URL), "
        "serves /metrics and /health on SYMBI_METRICS_PORT and answers health requests over NATS.",
        epilog=f"services:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("service", choices=names, metavar="SERVICE", help="the service to run (listed below)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from symbi_cli.main import load

    settings = load(args)
    return run_service(catalog.load(args.service), settings)
