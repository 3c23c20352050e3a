"""Regenerate the Python protobuf and gRPC code in libs/proto from proto/symbi/v1.

Usage:
    python scripts/gen_proto.py           # rewrite libs/proto/src/symbi_proto/v1
    python scripts/gen_proto.py --check   # exit 1, listing stale files, if regeneration would change anything

For every ``proto/symbi/v1/x.proto`` it writes ``x_pb2.py`` and ``x_pb2_grpc.py``
(grpcio-tools) with their stubs ``x_pb2.pyi`` and ``x_pb2_grpc.pyi`` (mypy-protobuf).

- The tools are pinned (``PINS``): another protoc or mypy-protobuf emits different
  code, which would make ``--check`` fail in CI, so the script refuses to run with
  any other version.
- Code is generated into a temporary directory first; the checked-in files are
  replaced only after generation succeeded, so a failure leaves them untouched.
- protoc writes imports as ``from symbi.v1 import x_pb2``; they are rewritten to
  ``from symbi_proto.v1 import x_pb2`` (and message classes get ``symbi_proto.v1``
  as their module) so the package imports without ``sys.path`` tricks.
- Output is deterministic: sorted inputs, no timestamps, byte-for-byte comparison.
- protoc warnings (e.g. an unused import) are errors.

Exit status: 0 success (or up to date), 1 stale (``--check``), 2 error.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_PACKAGE = "symbi/v1"
OUTPUT_DIR = ROOT / "libs" / "proto" / "src" / "symbi_proto" / "v1"

PINS = {"grpcio-tools": "1.85.1", "mypy-protobuf": "5.1.0"}
PLUGINS = {"mypy": "protoc-gen-mypy", "mypy_grpc": "protoc-gen-mypy_grpc"}
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
PROTOC_TIMEOUT_S = 300

_IMPORT = re.compile(r"^from symbi\.v1 import ", re.MULTILINE)
_MODULE_NAME = re.compile(r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')symbi\.v1\.(\w+_pb2')")


# How each difference found before writing is reported once it has been fixed.
_DONE = {"missing": "added", "extra": "removed", "differs": "updated"}


class GenerationError(Exception):
    """Code generation cannot proceed; the message says why and what to do."""


def check_pins() -> None:
    """Refuse to run unless the installed code generators are exactly the pinned versions."""
    problems = []
    for distribution, pinned in PINS.items():
        try:
            installed = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != pinned:
            problems.append(f"{distribution}=={pinned} is required, found {installed}")
    if problems:
        wanted = " ".join(f"{name}=={version}" for name, version in PINS.items())
        raise GenerationError(
            f"wrong code generator versions for {sys.executable}: {'; '.join(problems)}. "
            f"Install the pins (uv pip install {wanted}) or run with the project's .venv/bin/python."
        )


def plugin_path(executable: str) -> Path:
    """A protoc plugin installed by mypy-protobuf next to the running interpreter."""
    path = Path(sys.executable).parent / executable
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise GenerationError(f"protoc plugin {executable} not found at {path}; is mypy-protobuf installed here?")
    return path


def proto_sources() -> list[str]:
    """The .proto files to compile, relative to PROTO_ROOT, in sorted order."""
    sources = sorted(path.relative_to(PROTO_ROOT).as_posix() for path in (PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    if not sources:
        raise GenerationError(f"no .proto files found in {PROTO_ROOT / PROTO_PACKAGE}")
    return sources


def protoc_command(out_dir: Path, sources: list[str]) -> list[str]:
    """The grpc_tools.protoc command line generating all four outputs into out_dir."""
    well_known = resources.files("grpc_tools") / "_proto"
    plugins = [f"--plugin=protoc-gen-{name}={plugin_path(exe)}" for name, exe in PLUGINS.items()]
    return [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        "--fatal_warnings",
        *plugins,
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *sources,
    ]


def run_protoc(out_dir: Path, sources: list[str]) -> None:
    """Run protoc, raising GenerationError with its diagnostics when it fails."""
    command = protoc_command(out_dir, sources)
    try:
        result = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=PROTOC_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise GenerationError(f"protoc did not finish within {PROTOC_TIMEOUT_S}s") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise GenerationError(f"protoc failed (exit {result.returncode}):\n{output}")


def rewrite_imports(text: str) -> str:
    """Point generated imports and class modules at the symbi_proto.v1 package."""
    text = _IMPORT.sub("from symbi_proto.v1 import ", text)
    return _MODULE_NAME.sub(r"\1symbi_proto.v1.\2", text)


def expected_files(sources: list[str]) -> list[str]:
    """Names of every file generation must produce for the given sources."""
    stems = [Path(source).stem for source in sources]
    return sorted(stem + suffix for stem in stems for suffix in GENERATED_SUFFIXES)


def collect(generated_dir: Path, sources: list[str]) -> dict[str, bytes]:
    """Read, check and rewrite protoc's output: file name -> final content."""
    produced = sorted(path.name for path in generated_dir.iterdir()) if generated_dir.is_dir() else []
    expected = expected_files(sources)
    if produced != expected:
        missing, unexpected = sorted(set(expected) - set(produced)), sorted(set(produced) - set(expected))
        raise GenerationError(f"protoc produced an unexpected file set: missing {missing}, unexpected {unexpected}")
    files = {}
    for name in expected:
        text = rewrite_imports((generated_dir / name).read_text(encoding="utf-8"))
        if _IMPORT.search(text):
            raise GenerationError(f"{name} still imports from symbi.v1 after rewriting")
        files[name] = text.encode("utf-8")
    return files


def generate() -> dict[str, bytes]:
    """Generate all code in a temporary directory and return it, without touching OUTPUT_DIR."""
    check_pins()
    sources = proto_sources()
    with tempfile.TemporaryDirectory(prefix="symbi-gen-proto-") as tmp:
        out_dir = Path(tmp)
        run_protoc(out_dir, sources)
        return collect(out_dir / PROTO_PACKAGE, sources)


def checked_in() -> dict[str, bytes]:
    """The generated files currently in OUTPUT_DIR (hand-written files are ignored)."""
    if not OUTPUT_DIR.is_dir():
        return {}
    return {
        path.name: path.read_bytes()
        for path in sorted(OUTPUT_DIR.iterdir())
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    }


def differences(generated: dict[str, bytes], current: dict[str, bytes]) -> list[tuple[str, str]]:
    """(kind, file name) for every file that differs, is missing from OUTPUT_DIR, or is extra in it."""
    found = []
    for name in sorted(generated.keys() | current.keys()):
        if name not in current:
            found.append(("missing", name))
        elif name not in generated:
            found.append(("extra", name))
        elif generated[name] != current[name]:
            found.append(("differs", name))
    return found


def write_atomically(path: Path, content: bytes) -> None:
    """Replace path with content so readers see the old or the new file, never a partial one."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(content)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def install(generated: dict[str, bytes]) -> list[tuple[str, str]]:
    """Move generated code into OUTPUT_DIR and delete stale generated files; returns the differences fixed."""
    changes = differences(generated, checked_in())
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for kind, name in changes:
        if kind == "extra":
            (OUTPUT_DIR / name).unlink()
        else:
            write_atomically(OUTPUT_DIR / name, generated[name])
    return changes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and exit 1 if the checked-in code differs",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = OUTPUT_DIR.relative_to(ROOT)
    try:
        generated = generate()
    except GenerationError as exc:
        print(f"gen_proto: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = differences(generated, checked_in())
        if stale:
            print(f"gen_proto: {target} is stale; run: python scripts/gen_proto.py", file=sys.stderr)
            for kind, name in stale:
                print(f"  {kind + ':':9}{name}", file=sys.stderr)
            return 1
        print(f"gen_proto: {target} is up to date ({len(generated)} files)")
        return 0
    changes = install(generated)
    print(f"gen_proto: {len(generated)} files in {target}, {len(changes)} changed")
    for kind, name in changes:
        print(f"  {_DONE[kind] + ':':9}{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
