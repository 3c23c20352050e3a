#!/usr/bin/env bash
# Make a Docker engine with runc (Tier 1) and runsc/gVisor (Tier 2) available here.
# Idempotent and safe to run again. When no engine answers and we are root:
#   1. apt-get install docker.io runsc debootstrap (whatever is missing);
#   2. register the runsc runtime in /etc/docker/daemon.json (gVisor with --network=none,
#      which is what works on these machines; Tier 2 tasks get no network);
#   3. start dockerd in the background (log: /var/log/symbi-dockerd.log) and wait for it.
# Exit 0 when `docker info` answers; 1 with a reason otherwise.
set -euo pipefail

say() { printf 'docker-setup: %s\n' "$*"; }
engine_up() { docker info >/dev/null 2>&1; }
has_runsc() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }

if engine_up && has_runsc; then
    say "engine ready (runtimes: $(docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}'))"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    say "no Docker engine with a runsc runtime, and not root: cannot install one" >&2
    exit 1
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v runsc >/dev/null 2>&1 || missing+=(runsc)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt-get ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

runsc_path="$(command -v runsc)"
mkdir -p /etc/docker
python3 - "$runsc_path" <<'PY'
import json, pathlib, sys
path = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(path.read_text()) if path.exists() and path.read_text().strip() else {}
config.setdefault("runtimes", {})["runsc"] = {"path": sys.argv[1], "runtimeArgs": ["--network=none"]}
path.write_text(json.dumps(config, indent=2) + "\n")
PY

if engine_up; then
    say "engine running without runsc; reloading its configuration ..."
    pkill -HUP dockerd || true
else
    say "starting dockerd ..."
    # containerd is started by dockerd itself when none is running.
    nohup dockerd >/var/log/symbi-dockerd.log 2>&1 &
fi
for _ in $(seq 1 120); do
    if engine_up && has_runsc; then
        say "engine ready (runtimes: $(docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}'))"
        exit 0
    fi
    sleep 0.5
done
say "dockerd did not become ready with runsc; last log lines:" >&2
tail -n 20 /var/log/symbi-dockerd.log >&2 || true
exit 1
