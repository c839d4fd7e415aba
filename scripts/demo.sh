#!/usr/bin/env bash
# Start throwaway systemd hosts for the demo inventory, deploy site.yml to
# them, and show the client's journal and the server's metrics.
#
# Usage: scripts/demo.sh up|down
# The hosts are containers of ratelimit-systemd:debian12 (build it with
# molecule/images/build.sh) on the network ratelimit-demo, and the inventory
# is inventory/demo. This script lives outside that folder because Ansible
# would run any executable file in an inventory folder as an inventory script.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly image="${RATELIMIT_DEMO_IMAGE:-ratelimit-systemd:debian12}"
readonly network="ratelimit-demo"
readonly hosts=(ratelimit-demo-redis ratelimit-demo-server ratelimit-demo-client)

start_host() {
    local name="$1"
    if docker container inspect "$name" >/dev/null 2>&1; then
        echo "Host $name exists; reusing it."
        return 0
    fi
    # These options let systemd boot in an unprivileged container. Debian's
    # redis-server unit needs SYS_PTRACE for its ProtectProc= setting.
    docker run --detach --name "$name" --hostname "$name" --network "$network" \
        --cap-add SYS_ADMIN --cap-add SYS_PTRACE --security-opt seccomp=unconfined \
        --cgroupns=host --volume /sys/fs/cgroup:/sys/fs/cgroup:rw \
        --tmpfs /run --tmpfs /run/lock "$image" >/dev/null
    echo "Started $name"
}

wait_for_systemd() {
    local name="$1" state=""
    for _ in $(seq 60); do
        state=$(docker exec "$name" systemctl is-system-running 2>/dev/null || true)
        if [[ "$state" == running || "$state" == degraded ]]; then
            return 0
        fi
        sleep 1
    done
    echo "systemd in $name did not finish booting within 60 s (state: ${state:-unknown})." >&2
    return 1
}

up() {
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        echo "Image $image not found; build it with molecule/images/build.sh debian12." >&2
        exit 1
    fi
    docker network inspect "$network" >/dev/null 2>&1 || docker network create "$network" >/dev/null
    for name in "${hosts[@]}"; do
        start_host "$name"
    done
    for name in "${hosts[@]}"; do
        wait_for_systemd "$name"
    done

    local since
    since=$(docker exec ratelimit-demo-client date '+%Y-%m-%d %H:%M:%S')
    ansible-playbook --inventory inventory/demo site.yml

    echo
    echo "== journalctl -u ratelimit-client --since '$since' (on ratelimit-demo-client)"
    # The play starts the client only when it or its settings changed, so a
    # re-run may leave nothing new in the journal.
    if ! docker exec ratelimit-demo-client journalctl --unit ratelimit-client \
        --since "$since" --no-pager --output cat --quiet | grep .; then
        echo "(the client did not run in this play; start it with"
        echo " docker exec ratelimit-demo-client systemctl start ratelimit-client)"
    fi
    echo
    echo "== curl http://localhost/metrics (on ratelimit-demo-server)"
    local metrics
    metrics=$(docker exec ratelimit-demo-server curl --silent --show-error http://localhost/metrics)
    if ! grep -E '^(flask_http_request_total|client_requests_total)' <<<"$metrics"; then
        echo "(no request counted since the server last started)"
    fi
}

down() {
    for name in "${hosts[@]}"; do
        if docker container inspect "$name" >/dev/null 2>&1; then
            docker rm --force "$name" >/dev/null
            echo "Removed $name"
        fi
    done
    if docker network inspect "$network" >/dev/null 2>&1; then
        docker network rm "$network" >/dev/null
        echo "Removed network $network"
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *)
        echo "Usage: $0 up|down" >&2
        exit 2
        ;;
esac
