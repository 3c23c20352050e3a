"""``symbi``: one command line for the whole runtime.

Exit codes: 0 success, 1 failure at run time (a service unhealthy, a child died),
2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from symbi_common import __version__
from symbi_common.errors import ConfigError, SymbiError
from symbi_common.settings import Settings, load_settings

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    from symbi_cli import (
        agent_cmd,
        api_key_cmd,
        audit_cmd,
        bus_cmd,
        config_cmd,
        context_cmd,
        natsauth_cmd,
        policy_cmd,
        scenario_cmd,
        serve,
        status,
        tools_cmd,
        up,
    )

    parser = argparse.ArgumentParser(
        prog="symbi",
        description="Symbi: a secure, policy-aware runtime for autonomous AI agents.",
        epilog="Configuration: a TOML file (--config, SYMBI_CONFIG_PATH or ./symbi.toml) overridden by "
        "SYMBI_* environment variables; `symbi config env` lists them.",
    )
    parser.add_argument("--version", action="version", version=f"symbi {__version__}")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML config file (default: SYMBI_CONFIG_PATH)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (
        up,
        serve,
        status,
        config_cmd,
        policy_cmd,
        audit_cmd,
        agent_cmd,
        bus_cmd,
        context_cmd,
        tools_cmd,
        scenario_cmd,
        natsauth_cmd,
    ):
        module.register(commands)
    api_key_cmd.register(commands)
    return parser


def load(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"symbi: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SymbiError as exc:
        print(f"symbi: {exc.code}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
