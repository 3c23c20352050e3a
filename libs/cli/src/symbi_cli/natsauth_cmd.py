"""``symbi nats-auth``: the broker-authorization material for a NATS server Symbi does not start.

``symbi up`` makes its own (``<state>/nats-auth``). For docker compose, Kubernetes or an
existing NATS cluster, ``symbi nats-auth init KEYS --out DIR`` makes (once) and keeps the
operator and account keys in ``KEYS`` and writes the three files a deployment needs to
``DIR``:

- ``nats-auth.conf``: the authorization block of nats-server's configuration (operator JWT,
  system account, the account JWTs preloaded: ``include`` it, or pass it with ``-c``);
- ``service.creds``: credentials the services connect with (``[nats].credentials``);
- ``issuer.json``: the account signing key the lifecycle service issues agents' broker
  users with (``[messaging].issuer_file``).

Run again, it reuses the keys (so servers and agents already issued stay valid) and
writes fresh service credentials. The keys never leave ``KEYS``; nothing in ``DIR`` can
sign an account or change what the server trusts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from symbi_common import natsauth

SERVER_CONFIG = "nats-auth.conf"
SERVICE_CREDS = "service.creds"
ISSUER = "issuer.json"


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "nats-auth",
        help="make NATS operator-mode keys and credentials for a deployment",
        description="Make the operator-mode (JWT) authorization for a NATS server that `symbi up` does not "
        "start: the server's configuration, the services' credentials and the agent-credential issuer.",
    )
    sub = parser.add_subparsers(dest="nats_auth_command", metavar="ACTION", required=True)
    init = sub.add_parser(
        "init",
        help="make (or reuse) the keys in KEYS and write nats-auth.conf, service.creds and issuer.json",
        description="Make the operator and account keys in KEYS (once; kept 0600 in a 0700 directory) and write "
        f"{SERVER_CONFIG}, {SERVICE_CREDS} and {ISSUER} to --out (default: KEYS).",
    )
    init.add_argument("keys", type=Path, metavar="KEYS", help="directory of the operator and account keys (secret)")
    init.add_argument("--out", type=Path, help="where to write the deployment files (default: KEYS)")
    init.add_argument("--name", default="symbi-services", help="name in the service credentials (default: %(default)s)")
    init.set_defaults(handler=_init)


def _init(args: argparse.Namespace) -> int:
    keys: Path = args.keys
    out: Path = args.out or keys
    existed = all((keys / f"{name}.nk").exists() for name in ("operator", "system-account", "account"))
    authority = natsauth.BrokerAuthority.load_or_create(keys)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = [
        _write(out / SERVER_CONFIG, authority.server_config()),
        natsauth.write_creds(out / SERVICE_CREDS, authority.service_creds(args.name)),
        authority.issuer.to_file(out / ISSUER),
    ]
    print(
        f"{'reused' if existed else 'made'} operator {authority.operator.public} and account {authority.account.public}"
    )
    for path in written:
        print(f"  wrote {path}")
    print(
        "next: give nats-server the configuration (-c or include), the services SYMBI_NATS_CREDENTIALS, and the "
        "lifecycle service SYMBI_MESSAGING_ISSUER_FILE; on Kubernetes:\n"
        f"  kubectl create secret generic symbi-nats-auth --from-file={out / SERVER_CONFIG} "
        f"--from-file={out / SERVICE_CREDS} --from-file={out / ISSUER}"
    )
    return 0


def _write(path: Path, text: str) -> Path:
    """The server configuration: secret-free, but written owner-only like the rest."""
    return natsauth.write_creds(path, text)
