#!/usr/bin/env bash
# Build Symbi's container images locally, with no container registry:
#   base    symbi/base:bookworm  Debian bookworm (minbase) with Python 3.11, from debootstrap
#                                + `docker import`; also the default sandbox image
#   symbi   symbi:local          the one image of every service (Dockerfile), on the base
#
# usage: scripts/build-images.sh [base|symbi|all] [--rebuild] [--host-ca]
#   --rebuild   rebuild the base even if the image exists
#   --host-ca   trust this machine's CA bundle while building (TLS-intercepting proxies)
# Environment: SYMBI_BASE_IMAGE, SYMBI_IMAGE, DEBIAN_MIRROR override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${SYMBI_BASE_IMAGE:-symbi/base:bookworm}"
IMAGE="${SYMBI_IMAGE:-symbi:local}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
what="all"; rebuild=0; host_ca=0
for arg in "$@"; do
    case "$arg" in
        base|symbi|all) what="$arg" ;;
        --rebuild) rebuild=1 ;;
        --host-ca) host_ca=1 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-images: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done
say() { printf 'build-images: %s\n' "$*"; }
docker info >/dev/null 2>&1 || { say "no Docker engine answers (run scripts/docker-setup.sh as root)" >&2; exit 1; }

build_base() {
    if [ "$rebuild" = 0 ] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "$BASE_IMAGE exists (use --rebuild to rebuild)"
        return
    fi
    [ "$(id -u)" = 0 ] || { say "debootstrap needs root to build $BASE_IMAGE" >&2; exit 1; }
    command -v debootstrap >/dev/null || { say "debootstrap is not installed (scripts/docker-setup.sh installs it)" >&2; exit 1; }
    rootfs="$(mktemp -d /tmp/symbi-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' RETURN
    say "debootstrap bookworm (minbase + python3) into $rootfs from $MIRROR; this takes about a minute ..."
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$MIRROR" \
        >"$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log" >&2; exit 1; }
    # Trim what a sandbox never needs: package caches, docs, man pages.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
    say "importing the rootfs as $BASE_IMAGE ..."
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'CMD ["/bin/sh"]' \
        - "$BASE_IMAGE" >/dev/null
    rm -f "$rootfs.log"
    say "$BASE_IMAGE ready ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

build_symbi() {
    ca_dir=deploy/docker/ca-certificates
    if [ "$host_ca" = 1 ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$ca_dir/host-bundle.crt"
    fi
    say "building $IMAGE from Dockerfile on $BASE_IMAGE ..."
    started=$SECONDS
    DOCKER_BUILDKIT=0 docker build --quiet --build-arg "PYTHON_IMAGE=$BASE_IMAGE" -t "$IMAGE" . 2>&1 \
        | grep -v -e 'legacy builder is deprecated' -e 'BuildKit is currently disabled' -e 'environment-variable' -e '^ *$' || true
    docker image inspect "$IMAGE" >/dev/null 2>&1 || { say "build of $IMAGE failed" >&2; exit 1; }
    say "$IMAGE ready in $((SECONDS - started))s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

case "$what" in
    base) build_base ;;
    symbi) build_base; build_symbi ;;
    all) build_base; build_symbi ;;
esac
