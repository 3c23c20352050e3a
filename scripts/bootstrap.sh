#!/usr/bin/env bash
# Install everything Symbi needs into ./.venv from the lock file (uv.lock).
# Works on a fresh Debian machine with Python 3.11 and pip; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION="0.13.8"
export UV_PYTHON_DOWNLOADS=never   # use this machine's Python 3.11; never fetch one

python_bin="$(command -v python3.11 || command -v python3)"
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "bootstrap: Symbi needs Python 3.11 (found $("$python_bin" --version 2>&1))" >&2
    exit 1
fi

if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | awk '{print $2}')" != "$UV_VERSION" ]; then
    echo "bootstrap: installing uv $UV_VERSION with pip ..."
    "$python_bin" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
    hash -r
fi
uv_bin="$(command -v uv || echo "$("$python_bin" -m site --user-base)/bin/uv")"

echo "bootstrap: syncing .venv from uv.lock ..."
"$uv_bin" sync --frozen --all-packages --python "$python_bin" "$@"
echo "bootstrap: ready (.venv/bin/symbi)"
