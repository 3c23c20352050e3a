"""``symbi config``: check the configuration, show the effective values, list variables."""

from __future__ import annotations

import argparse
import json
from typing import Any

from symbi_common import envvars


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "config",
        help="check and show configuration",
        description="Validate the TOML config and SYMBI_* variables, show effective values, or list variables.",
    )
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    sub.add_parser("check", help="validate; exit 2 naming the bad key").set_defaults(handler=check)
    sub.add_parser("show", help="print the effective configuration as JSON (secrets masked)").set_defaults(handler=show)
    sub.add_parser("env", help="print the registry of environment variables (Markdown)").set_defaults(handler=env)


def check(args: argparse.Namespace) -> int:
    from symbi_cli.main import load

    settings = load(args)
    print(f"configuration ok (mode {settings.runtime.mode}, state dir {settings.runtime.state_dir})")
    return 0


def show(args: argparse.Namespace) -> int:
    from symbi_cli.main import load

    settings = load(args)
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0


def env(_: argparse.Namespace) -> int:
    print(envvars.markdown_table(), end="")
    return 0
