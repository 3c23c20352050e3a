#!/usr/bin/env bash
# One command: install what is needed, then run the whole stack on this machine.
# Arguments are passed to `symbi up` (see `symbi up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --no-dev
# Sandboxed tasks need the base image, built locally on first use (never pulled). Without a
# Docker engine the stack still starts; the sandbox orchestrator says which tiers are missing.
if docker info >/dev/null 2>&1 && ! docker image inspect symbi/base:bookworm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        scripts/build-images.sh base
    else
        echo "up: symbi/base:bookworm is missing; build it once as root: scripts/build-images.sh base" >&2
    fi
fi
exec .venv/bin/symbi up "$@"
