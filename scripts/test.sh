#!/usr/bin/env bash
# One command: install what is needed, then run every check CI runs:
# format check, lint, type check, generated-code check, and the full test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k settings).
# Needs a Docker engine with runc and runsc (gVisor) for the container and sandbox
# tests: as root, scripts/docker-setup.sh installs and starts one when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/docker-setup.sh
scripts/build-images.sh base   # the sandbox image (debootstrap + docker import; skipped when present)

step() { printf '\n==> %s\n' "$*"; }
step "format (ruff format --check)"
.venv/bin/ruff format --check .
step "lint (ruff check)"
.venv/bin/ruff check .
step "types (mypy --strict)"
.venv/bin/mypy
step "generated code and docs are up to date"
.venv/bin/python scripts/gen_proto.py --check
.venv/bin/python scripts/gen_docs.py --check
step "tests (pytest)"
.venv/bin/coverage erase
.venv/bin/coverage run -m pytest -q "$@"
step "coverage (floor in pyproject.toml)"
.venv/bin/coverage combine -q
.venv/bin/coverage report
