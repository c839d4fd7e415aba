#!/usr/bin/env bash
# Prepare a Debian 12/13 machine for the demo and the tests: install the
# Debian packages they use if any is missing, and start the Docker engine if
# none responds. Needs root for both. Safe to run again, because it changes
# nothing on a machine that is already prepared.
#
# A dockerd started here runs in the background with its log in
# $RATELIMIT_STATE_DIR/dockerd.log and its PID in dockerd.pid beside it.
set -euo pipefail

readonly state_dir="${RATELIMIT_STATE_DIR:-/var/tmp/ratelimit-service}"
readonly packages=(
    python3 python3-venv make curl ca-certificates
    redis-server docker.io docker-compose debootstrap wrk
)

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed"; then
        missing+=("$package")
    fi
done

if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $EUID -ne 0 ]]; then
        echo "Missing Debian packages: ${missing[*]}. Run this script as root, or install them with apt-get." >&2
        exit 1
    fi
    echo "Installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
    exit 0
fi

mkdir -p "$state_dir"
echo "Starting dockerd in the background (log: $state_dir/dockerd.log)"
dockerd >"$state_dir/dockerd.log" 2>&1 &
echo $! >"$state_dir/dockerd.pid"
for _ in $(seq 60); do
    if docker info >/dev/null 2>&1; then
        exit 0
    fi
    sleep 1
done
tail -n 20 "$state_dir/dockerd.log" >&2
echo "dockerd did not respond within 60 s. Read its log: $state_dir/dockerd.log" >&2
exit 1
