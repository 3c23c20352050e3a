"""Where signing keys come from: trust bundles, local files, ``.well-known/schemapin.json``.

For a domain the first source that has a discovery document wins, in this order:

1. SchemaPin trust bundles (``[mcp].trust_bundles``): ``{"schemapin_bundle_version",
   "documents": [{"domain", "public_key_pem", ...}], "revocations": [...]}``;
2. ``[mcp].keys_dir``: ``<domain>.json`` (a discovery document) and
   ``<domain>.revocations.json`` (a revocation document); in file names ``:`` and ``/``
   of a domain given as a URL become ``_`` (``http://127.0.0.1:8000`` -> ``127.0.0.1_8000``);
3. ``https://<domain>/.well-known/schemapin.json``; a domain may be written as a base
   URL, and ``http://`` is accepted for loopback hosts only (tests, sidecars).

Revocation is the union of every source, never the first: the discovery document's
``revoked_keys``, the standalone document at its ``revocation_endpoint``, the bundles'
revocations and the local revocation file. A ``revocation_endpoint`` that cannot be
fetched fails the discovery (a key is never assumed unrevoked). Documents are capped
at 64 KiB, redirects are not followed, every fetch has a timeout, and a result is
reused for ``discovery_cache_s``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from symbi_common.errors import InvalidArgumentError, SymbiError, UnavailableError
from symbi_mcp_gateway import signatures

MAX_DOCUMENT_BYTES = 64 * 1024
WELL_KNOWN_PATH = "/.well-known/schemapin.json"


@dataclass(frozen=True, slots=True)
class DomainKeys:
    """The current signing key of a domain and every fingerprint revoked for it."""

    domain: str
    public_key: ec.EllipticCurvePublicKey
    pem: str
    fingerprint: str
    revoked: frozenset[str]
    source: str
    developer_name: str = ""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_url(url: str) -> str:
    """An https URL, or an http one to a loopback host; anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
        return url
    raise InvalidArgumentError(f"{url!r}: key discovery needs https (plain http only to a loopback host)")


def well_known_url(domain: str) -> str:
    if "://" not in domain:
        return checked_url(f"https://{domain}{WELL_KNOWN_PATH}")
    parts = urlsplit(domain)
    return checked_url(f"{parts.scheme}://{parts.netloc}{WELL_KNOWN_PATH}")


def file_stem(domain: str) -> str:
    bare = domain.split("://", 1)[-1].rstrip("/")
    return bare.replace(":", "_").replace("/", "_")


def _revoked_fingerprints(document: Any, domain: str, where: str) -> set[str]:
    """Fingerprints of a SchemaPin revocation document (``revoked_keys: [{fingerprint, ...}]``)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("revoked_keys"), list):
        raise InvalidArgumentError(f"{where}: not a SchemaPin revocation document")
    named = document.get("domain")
    if named not in (None, "", domain, file_stem(domain)):
        raise InvalidArgumentError(f"{where}: revocation document is for {named!r}, not {domain!r}")
    out = set()
    for entry in document["revoked_keys"]:
        value = entry.get("fingerprint") if isinstance(entry, Mapping) else entry
        if not isinstance(value, str):
            raise InvalidArgumentError(f"{where}: a revoked key entry has no fingerprint")
        out.add(value)
    return out


def _simple_revocations(discovery: Mapping[str, Any], where: str) -> set[str]:
    listed = discovery.get("revoked_keys", [])
    if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
        raise InvalidArgumentError(f"{where}: revoked_keys must be a list of fingerprints")
    return set(listed)


class KeyDirectory:
    """Resolves the signing key of a domain, with its revocations, from every configured source."""

    def __init__(
        self,
        *,
        trust_bundles: Sequence[Path] = (),
        keys_dir: Path | None = None,
        timeout_s: float = 5.0,
        cache_s: float = 300.0,
    ) -> None:
        self.trust_bundles = tuple(trust_bundles)
        self.keys_dir = keys_dir
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self.fetches = 0
        self._http = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._cache: dict[str, tuple[float, DomainKeys]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        await self._http.aclose()

    def forget(self, domain: str = "") -> None:
        """Drop cached results (one domain, or all): the next resolution fetches again."""
        if domain:
            self._cache.pop(domain, None)
        else:
            self._cache.clear()

    async def resolve(self, domain: str) -> DomainKeys:
        """The domain's key and revocations; ``SymbiError`` (unavailable / invalid) when it cannot be had."""
        cached = self._cache.get(domain)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        lock = self._locks.setdefault(domain, asyncio.Lock())
        async with lock:
            cached = self._cache.get(domain)
            if cached is not None and time.monotonic() < cached[0]:
                return cached[1]
            keys = await self._discover(domain)
            if self.cache_s > 0:
                self._cache[domain] = (time.monotonic() + self.cache_s, keys)
            return keys

    async def _discover(self, domain: str) -> DomainKeys:
        revoked: set[str] = set()
        found: tuple[Mapping[str, Any], str] | None = None
        for path in self.trust_bundles:
            bundle = _read_json(path)
            documents, revocations = bundle.get("documents"), bundle.get("revocations", [])
            if not isinstance(documents, list) or not isinstance(revocations, list):
                raise InvalidArgumentError(f"{path}: not a SchemaPin trust bundle")
            for doc in documents:
                if isinstance(doc, Mapping) and doc.get("domain") == domain and found is None:
                    found = ({k: v for k, v in doc.items() if k != "domain"}, f"bundle:{path}")
            for rev in revocations:
                if isinstance(rev, Mapping) and rev.get("domain") == domain:
                    revoked |= _revoked_fingerprints(rev, domain, str(path))
        if self.keys_dir is not None:
            stem = file_stem(domain)
            local = self.keys_dir / f"{stem}.json"
            if found is None and local.is_file():
                found = (_read_json(local), f"file:{local}")
            rev_file = self.keys_dir / f"{stem}.revocations.json"
            if rev_file.is_file():
                revoked |= _revoked_fingerprints(_read_json(rev_file), domain, str(rev_file))
        if found is None:
            url = well_known_url(domain)
            found = (await self._fetch(url), url)
        discovery, source = found
        revoked |= _simple_revocations(discovery, source)
        endpoint = discovery.get("revocation_endpoint")
        if endpoint:
            if not isinstance(endpoint, str):
                raise InvalidArgumentError(f"{source}: revocation_endpoint must be a URL")
            revoked |= _revoked_fingerprints(await self._fetch(checked_url(endpoint)), domain, endpoint)
        pem = discovery.get("public_key_pem")
        if not isinstance(discovery.get("schema_version"), str) or not isinstance(pem, str):
            raise InvalidArgumentError(f"{source}: a discovery document needs schema_version and public_key_pem")
        try:
            key = signatures.load_public_key(pem)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{source}: {exc.message}") from None
        developer = discovery.get("developer_name")
        return DomainKeys(domain, key, pem, signatures.fingerprint(key), frozenset(revoked), source,
                          developer if isinstance(developer, str) else "")  # fmt: skip

    async def _fetch(self, url: str) -> Mapping[str, Any]:
        self.fetches += 1
        try:
            async with self._http.stream("GET", url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise UnavailableError(f"{url}: HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise InvalidArgumentError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
        except SymbiError:
            raise
        except httpx.TimeoutException:
            raise UnavailableError(f"{url}: no answer within {self.timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise UnavailableError(f"{url}: {type(exc).__name__}: {exc}") from None
        return _parse(bytes(body), url)


def _read_json(path: Path) -> Mapping[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnavailableError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_DOCUMENT_BYTES * 16:
        raise InvalidArgumentError(f"{path}: larger than {MAX_DOCUMENT_BYTES * 16} bytes")
    return _parse(data, str(path))


def _parse(data: bytes, where: str) -> Mapping[str, Any]:
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{where}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{where}: not a JSON object")
    return value
