#!/usr/bin/env bash
# One command: install what is needed, then run the whole stack on this machine.
# Arguments are passed to `symbi up` (see `symbi up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --no-dev
exec .venv/bin/symbi up "$@"
