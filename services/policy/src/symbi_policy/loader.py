"""Policies from a directory: ``*.yaml``, ``*.yml`` and ``*.json`` files, watched.

Each file may hold several policy documents. A scan registers every policy whose
text differs from the version in force (recorded as created by ``file:<name>``),
and deletes policies that came from a file that no longer holds them. A file that
does not compile changes nothing: its problems are logged with file, line and
column and reported in health, and the previous versions stay in force. Files are
re-read only when their size or modification time changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from symbi_common.errors import SymbiError
from symbi_policy.compiler import CompiledPolicy, compile_sources
from symbi_policy.document import DocumentError
from symbi_policy.replication import PolicyStore

log = logging.getLogger(__name__)

SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
ORIGIN = "file:"


@dataclass(slots=True)
class ScanResult:
    registered: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class DirectoryLoader:
    def __init__(
        self, store: PolicyStore, directory: Path, *, on_error: Callable[[str, str], None] | None = None
    ) -> None:
        self.store = store
        self.directory = directory
        self._on_error = on_error or (lambda component, message: None)
        self._seen: dict[Path, tuple[int, int]] = {}
        self._ids_by_file: dict[str, set[str]] = {}

    async def scan(self) -> ScanResult:
        result = ScanResult()
        if not self._seen and not self._ids_by_file:  # first scan: learn which file defined what
            for policy in self.store.current.policies.values():
                if policy.policy.created_by.startswith(ORIGIN):
                    self._ids_by_file.setdefault(policy.policy.created_by[len(ORIGIN) :], set()).add(policy.id)
        files = await asyncio.to_thread(_policy_files, self.directory)
        present = {path.name for path in files}
        for path, stamp in files.items():
            if self._seen.get(path) == stamp:
                continue
            self._seen[path] = stamp
            await self._load(path, result)
        for name in [name for name in self._ids_by_file if name not in present]:
            self._seen = {p: s for p, s in self._seen.items() if p.name != name}
            await self._retire(name, set(), result)
            del self._ids_by_file[name]
        return result

    async def _load(self, path: Path, result: ScanResult) -> None:
        name = path.name
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
            compiled = compile_sources(text, str(path), SUFFIXES[path.suffix])
        except (OSError, UnicodeDecodeError) as exc:
            self._fail(result, f"{path}: cannot read: {exc}")
            return
        except DocumentError as exc:
            for issue in exc.issues:
                self._fail(result, f"{issue} (previous version stays in force)")
            return
        for policy in compiled:
            await self._register(policy, name, result)
        await self._retire(name, {policy.id for policy in compiled}, result)
        self._ids_by_file[name] = {policy.id for policy in compiled}

    async def _register(self, policy: CompiledPolicy, name: str, result: ScanResult) -> None:
        for warning in policy.warnings:
            log.warning("%s", warning)
        try:
            change = await self.store.register(policy, created_by=ORIGIN + name)
        except SymbiError as exc:
            self._fail(result, f"{name}: cannot register {policy.id}: {exc}")
            return
        if not change.unchanged:
            result.registered.append(policy.id)
            log.info("policy %s v%d loaded from %s", policy.id, change.policy.version if change.policy else 0, name)

    async def _retire(self, name: str, keep: set[str], result: ScanResult) -> None:
        """Delete the policies this file used to define and no longer does (if nobody re-registered them)."""
        for policy_id in sorted(self._ids_by_file.get(name, set()) - keep):
            current = self.store.current.policies.get(policy_id)
            if current is None or current.policy.created_by != ORIGIN + name:
                continue
            try:
                await self.store.delete(policy_id)
            except SymbiError as exc:
                self._fail(result, f"{name}: cannot delete {policy_id}: {exc}")
                continue
            result.deleted.append(policy_id)
            log.info("policy %s deleted: %s no longer defines it", policy_id, name)

    def _fail(self, result: ScanResult, message: str) -> None:
        log.error("policy file problem: %s", message)
        result.errors.append(message)
        self._on_error("policy-files", message)

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.scan()


def _policy_files(directory: Path) -> dict[Path, tuple[int, int]]:
    """Policy files in ``directory`` (sorted) with their (mtime, size) stamps."""
    if not directory.is_dir():
        return {}
    found = {}
    for path in sorted(directory.iterdir()):
        if path.suffix in SUFFIXES and path.is_file():
            stat = path.stat()
            found[path] = (stat.st_mtime_ns, stat.st_size)
    return found
