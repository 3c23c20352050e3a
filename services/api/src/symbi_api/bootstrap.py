"""The bootstrap admin key: how the first caller gets in.

At start-up (``[api].bootstrap_admin``, on by default) the API makes sure one admin key
exists: the operator's ``[api].admin_key`` (``SYMBI_API_ADMIN_KEY``, e.g. from a
Kubernetes Secret), else the key in ``[api].admin_key_file`` (default
``<state_dir>/api/admin.key``), else a new key written to that file with mode 0600 (its
directory 0700). Its record is registered in Redis once; a bootstrap key that was
revoked stays revoked (a new one takes ``symbi api-key create`` or a new file).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from symbi_api.keys import ApiKey, KeySpec, KeyStore, new_token
from symbi_common.errors import ConfigError, InvalidArgumentError
from symbi_common.settings import Settings

log = logging.getLogger(__name__)

ADMIN = KeySpec(name="admin", scopes=("admin",), kind="user", roles=("admin",), description="created at start-up")


@dataclass(frozen=True, slots=True)
class Bootstrapped:
    key: ApiKey
    file: Path | None
    """Where the key is written (None when it came from ``[api].admin_key``)."""


def key_file(settings: Settings) -> Path:
    return settings.api.admin_key_file or settings.runtime.state_dir / "api" / "admin.key"


def read_or_create_key_file(path: Path) -> str:
    """The key in ``path``, or a new one written there with mode 0600 (never readable by others)."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise ConfigError(f"cannot read the API admin key file {path}: {exc.strerror}") from None
    if text:
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"the API admin key file {path} is readable by others; chmod 600 it")
        return text
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = new_token()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another replica wrote it first: use theirs
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot write the API admin key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


async def ensure_admin_key(store: KeyStore, settings: Settings) -> Bootstrapped | None:
    if not settings.api.bootstrap_admin:
        return None
    configured = settings.api.admin_key
    path: Path | None = None
    if configured is not None:
        token = configured.get_secret_value().strip()
    else:
        path = key_file(settings)
        token = read_or_create_key_file(path)
    try:
        key, added = await store.register(token, ADMIN, created_by="bootstrap")
    except InvalidArgumentError as exc:
        raise ConfigError(f"[api].admin_key: {exc.message}") from None
    if key.revoked:
        log.warning("the bootstrap admin key %s was revoked; it stays revoked", key.key_id)
    elif added:
        log.info("bootstrap admin key %s registered (%s)", key.key_id, path or "from [api].admin_key")
    return Bootstrapped(key, path)
