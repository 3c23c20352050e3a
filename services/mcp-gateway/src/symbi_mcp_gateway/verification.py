"""SchemaPin verification of tool descriptors, with TOFU pins, failing closed.

For one tool, in this order (the first failure decides):

1. ``off`` mode: SKIPPED, offered.
2. no signature (neither in ``_meta`` nor in the server's signatures file): UNSIGNED.
3. the server names no ``schemapin_domain``, or its key cannot be discovered: DISCOVERY_FAILED.
4. the discovered key, or the key pinned for the tool, is revoked: KEY_REVOKED.
5. a key is pinned for the tool and the discovered one differs (or the domain changed):
   KEY_MISMATCH, until an operator re-pins.
6. any signature present does not verify with the key: INVALID_SIGNATURE.
7. only now, with a verified signature, a tool without a pin gets one (TOFU).
8. the descriptor differs from the pinned one: with a ``symbi-descriptor-v1`` signature
   the signer vouched for the new descriptor, which is accepted and recorded; with a
   ``schema`` signature alone the change is not covered: DESCRIPTOR_CHANGED.
9. VERIFIED with a descriptor signature; SCHEMA_ONLY with a schema signature alone.

Which tools are offered: ``strict`` offers VERIFIED only; ``warn`` also offers the
unverifiable (UNSIGNED, SCHEMA_ONLY, DISCOVERY_FAILED), flagged, but never a tool with
evidence against it (INVALID_SIGNATURE, KEY_REVOKED, KEY_MISMATCH, DESCRIPTOR_CHANGED);
``off`` offers everything. Signature checks are cached by (key, document digest,
signature), so listing again costs no cryptography.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from symbi_common.errors import FailedPreconditionError, InvalidArgumentError, SymbiError
from symbi_mcp_gateway import signatures
from symbi_mcp_gateway.keys import DomainKeys, KeyDirectory
from symbi_mcp_gateway.pins import TOFU, Pin, PinStore, new_pin
from symbi_proto.v1 import tools_pb2

V = tools_pb2
MODES = {"strict": V.VERIFICATION_MODE_STRICT, "warn": V.VERIFICATION_MODE_WARN, "off": V.VERIFICATION_MODE_OFF}
UNVERIFIABLE = frozenset({V.VERIFICATION_STATUS_UNSIGNED, V.VERIFICATION_STATUS_SCHEMA_ONLY,
                          V.VERIFICATION_STATUS_DISCOVERY_FAILED})  # fmt: skip
CHECK_CACHE_SIZE = 10_000


@dataclass(slots=True)
class Verdict:
    status: int
    offered: bool
    detail: str
    descriptor_sha256: str
    coverage: str = ""
    domain: str = ""
    fingerprint: str = ""
    signature: str = ""
    pin: Pin | None = None
    newly_pinned: bool = False
    descriptor_updated: bool = False
    verified_at: float = field(default_factory=time.time)

    @property
    def status_name(self) -> str:
        return V.VerificationStatus.Name(self.status).removeprefix("VERIFICATION_STATUS_").lower()  # type: ignore[arg-type]

    def to_proto(self, mode: str) -> tools_pb2.ToolVerification:
        out = V.ToolVerification(
            status=self.status,  # type: ignore[arg-type]
            mode=MODES[mode],
            key_fingerprint=self.fingerprint,
            domain=self.domain,
            signature=self.signature,
            descriptor_sha256=self.descriptor_sha256,
            pinned=self.pin is not None,
            detail=self.detail,
            coverage=self.coverage,
            offered=self.offered,
        )
        out.verified_at.FromNanoseconds(int(self.verified_at * 1e9))
        if self.pin is not None:
            out.pinned_at.FromNanoseconds(int(self.pin.pinned_at * 1e9))
        return out


def offered(mode: str, status: int) -> bool:
    if mode == "off":
        return True
    if status == V.VERIFICATION_STATUS_VERIFIED:
        return True
    return mode == "warn" and status in UNVERIFIABLE


class Verifier:
    def __init__(self, mode: str, keys: KeyDirectory, pins: PinStore) -> None:
        if mode not in MODES:
            raise InvalidArgumentError(f"unknown verification mode {mode!r}")
        self.mode = mode
        self.keys = keys
        self.pins = pins
        self.checks = 0
        self._checked: OrderedDict[tuple[str, str, str], bool] = OrderedDict()

    def _verdict(self, status: int, detail: str, sha: str, **kw: Any) -> Verdict:
        return Verdict(status, offered(self.mode, status), detail, sha, **kw)

    def _check(self, key: ec.EllipticCurvePublicKey, fp: str, document: Any, signature: str) -> bool:
        try:
            doc_digest = signatures.digest(document).hex()
        except InvalidArgumentError:
            return False
        cache_key = (fp, doc_digest, signature)
        known = self._checked.get(cache_key)
        if known is not None:
            self._checked.move_to_end(cache_key)
            return known
        self.checks += 1
        ok = signatures.verify(document, signature, key)
        self._checked[cache_key] = ok
        while len(self._checked) > CHECK_CACHE_SIZE:
            self._checked.popitem(last=False)
        return ok

    def _bad_signature(self, keys: DomainKeys, tool: Mapping[str, Any], sigs: Mapping[str, str]) -> str:
        """The first coverage whose signature does not verify with the key, or ''."""
        for coverage, signature in sigs.items():
            if not self._check(keys.public_key, keys.fingerprint, signatures.covered_document(tool, coverage),
                               signature):  # fmt: skip
                return coverage
        return ""

    async def verify(
        self, server: str, domain: str, tool: Mapping[str, Any], published: Mapping[str, str] | None = None
    ) -> Verdict:
        """Verify a tool given in MCP wire form; ``published``: signatures from the server's signatures file."""
        sha = signatures.descriptor_sha256(tool)
        if self.mode == "off":
            return self._verdict(V.VERIFICATION_STATUS_SKIPPED, "verification is off", sha)
        sigs = {**signatures.signatures_from_meta(tool.get("_meta")), **(published or {})}
        if not sigs:
            return self._verdict(V.VERIFICATION_STATUS_UNSIGNED, "no SchemaPin signature published", sha)
        coverage = signatures.DESCRIPTOR_V1 if signatures.DESCRIPTOR_V1 in sigs else signatures.SCHEMA
        base: dict[str, Any] = {"coverage": coverage, "domain": domain, "signature": sigs[coverage]}
        if not domain:
            return self._verdict(V.VERIFICATION_STATUS_DISCOVERY_FAILED, "the server has no schemapin_domain", sha,
                                 **base)  # fmt: skip
        try:
            keys = await self.keys.resolve(domain)
            pin = await self.pins.get(server, str(tool.get("name")))
        except SymbiError as exc:
            return self._verdict(V.VERIFICATION_STATUS_DISCOVERY_FAILED, exc.message, sha, **base)
        base |= {"fingerprint": keys.fingerprint, "pin": pin}
        if keys.fingerprint in keys.revoked:
            return self._verdict(V.VERIFICATION_STATUS_KEY_REVOKED, f"key {keys.fingerprint} is revoked", sha, **base)
        if pin is not None and pin.fingerprint in keys.revoked:
            return self._verdict(V.VERIFICATION_STATUS_KEY_REVOKED, f"pinned key {pin.fingerprint} is revoked", sha,
                                 **base)  # fmt: skip
        if pin is not None and (pin.fingerprint != keys.fingerprint or pin.domain != domain):
            detail = f"{domain} now has key {keys.fingerprint}; {pin.fingerprint} ({pin.domain}) is pinned"
            return self._verdict(V.VERIFICATION_STATUS_KEY_MISMATCH, detail + "; an operator must re-pin", sha,
                                 **base)  # fmt: skip
        bad = self._bad_signature(keys, tool, sigs)
        if bad:
            detail = f"the {bad} signature does not verify with {keys.fingerprint}"
            return self._verdict(V.VERIFICATION_STATUS_INVALID_SIGNATURE, detail, sha, **base)
        return await self._after_signature(server, tool, keys, pin, coverage, sha, base)

    async def _after_signature(
        self, server: str, tool: Mapping[str, Any], keys: DomainKeys, pin: Pin | None, coverage: str, sha: str,
        base: dict[str, Any],
    ) -> Verdict:  # fmt: skip
        name = str(tool.get("name"))
        newly_pinned = updated = False
        try:
            if pin is None:
                mine = new_pin(server, name, keys.domain, keys.fingerprint, keys.pem, TOFU, sha, coverage)
                pin = await self.pins.pin_first(mine)
                newly_pinned = pin is mine
                base["pin"] = pin
                if pin.fingerprint != keys.fingerprint:
                    return self._verdict(V.VERIFICATION_STATUS_KEY_MISMATCH, f"{pin.fingerprint} was pinned first",
                                         sha, **base)  # fmt: skip
            elif pin.descriptor_sha256 != sha:
                if coverage != signatures.DESCRIPTOR_V1:
                    detail = "name, description or annotations changed since pinning and no signature covers them"
                    return self._verdict(V.VERIFICATION_STATUS_DESCRIPTOR_CHANGED, detail, sha, **base)
                pin = pin.with_descriptor(sha)
                await self.pins.put(pin)
                base["pin"], updated = pin, True
        except SymbiError as exc:
            return self._verdict(V.VERIFICATION_STATUS_DISCOVERY_FAILED, exc.message, sha, **base)
        if coverage == signatures.DESCRIPTOR_V1:
            status, detail = V.VERIFICATION_STATUS_VERIFIED, f"descriptor signed by {keys.domain}"
        else:
            status, detail = V.VERIFICATION_STATUS_SCHEMA_ONLY, "only the input schema is signed"
        verdict = self._verdict(status, detail, sha, **base)
        verdict.newly_pinned, verdict.descriptor_updated = newly_pinned, updated
        return verdict

    async def repin(
        self,
        server: str,
        domain: str,
        tool: Mapping[str, Any],
        published: Mapping[str, str] | None,
        *,
        expected_fingerprint: str,
        by: str,
    ) -> Verdict:
        """An operator pins the domain's current key for a tool; the signature must verify with it first."""
        if not domain:
            raise FailedPreconditionError(f"server {server} has no schemapin_domain: nothing to pin")
        self.keys.forget(domain)
        keys = await self.keys.resolve(domain)
        name = str(tool.get("name"))
        if expected_fingerprint and keys.fingerprint != expected_fingerprint:
            raise FailedPreconditionError(f"{domain} publishes {keys.fingerprint}, not {expected_fingerprint}")
        current = await self.pins.get(server, name)
        if current is not None and current.fingerprint != keys.fingerprint and not expected_fingerprint:
            raise FailedPreconditionError(
                f"{server}/{name} is pinned to {current.fingerprint}; name the new key ({keys.fingerprint}) to re-pin"
            )
        if keys.fingerprint in keys.revoked:
            raise FailedPreconditionError(f"key {keys.fingerprint} of {domain} is revoked")
        sigs = {**signatures.signatures_from_meta(tool.get("_meta")), **(published or {})}
        if not sigs:
            raise FailedPreconditionError(f"{server}/{name} publishes no signature: nothing to pin")
        bad = self._bad_signature(keys, tool, sigs)
        if bad:
            raise FailedPreconditionError(
                f"the {bad} signature of {server}/{name} does not verify with {keys.fingerprint}"
            )
        coverage = signatures.DESCRIPTOR_V1 if signatures.DESCRIPTOR_V1 in sigs else signatures.SCHEMA
        sha = signatures.descriptor_sha256(tool)
        await self.pins.put(new_pin(server, name, domain, keys.fingerprint, keys.pem, by or "operator", sha, coverage))
        return await self.verify(server, domain, tool, published)
