"""Regenerate docs/configuration.md from the environment-variable registry.

Usage: python scripts/gen_docs.py [--check]   (--check exits 1 if the file is stale)
"""

from __future__ import annotations

import sys
from pathlib import Path

from symbi_common import envvars

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "configuration.md"

HEADER = """# Configuration

Symbi reads a TOML file, then environment variables, then falls back to defaults
(highest precedence first: environment, file, default). The file is `--config FILE`,
else `SYMBI_CONFIG_PATH`, else `./symbi.toml` when present. Unknown sections and keys
are errors; every error names the key, where the value came from, and the problem.
`symbi config check` validates, `symbi config show` prints the effective values
(secrets masked).

Every key with its default: [`examples/symbi.toml`](../examples/symbi.toml).

## Environment variables

This table is generated from `libs/common/src/symbi_common/envvars.py` by
`python scripts/gen_docs.py`; a test fails when it is stale.

"""


def render() -> str:
    return HEADER + envvars.markdown_table()


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python scripts/gen_docs.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
