#!/usr/bin/env bash
# Build the systemd test-host images that molecule and the demo boot, without
# any image registry: debootstrap a minimal Debian root, make it trust the same
# CAs as the machine that builds it, and load it with `docker import`.
#
# Usage: molecule/images/build.sh [debian12|debian13]...   (default: both)
# An image that already exists is kept; set REBUILD=1 to build it again.
set -euo pipefail

readonly image_repository="${RATELIMIT_IMAGE_REPOSITORY:-ratelimit-systemd}"
readonly mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# python3-apt lets Ansible's apt module run on the host; curl serves the
# checks that request the service from inside the host.
readonly packages="systemd,systemd-sysv,dbus,python3,python3-apt,python3-venv,sudo,procps,iproute2,ca-certificates,curl"

suite_for() {
    case "$1" in
        debian12) echo bookworm ;;
        debian13) echo trixie ;;
        *)
            echo "Unknown image '$1': expected debian12 or debian13." >&2
            return 2
            ;;
    esac
}

# The root being built, removed on exit whether the build succeeded or not.
rootfs=""
cleanup() {
    if [[ -n "$rootfs" ]]; then
        rm -rf "$rootfs"
    fi
}
trap cleanup EXIT

build_image() {
    local name="$1" suite
    suite=$(suite_for "$name")
    if [[ "${REBUILD:-0}" != 1 ]] && docker image inspect "$image_repository:$name" >/dev/null 2>&1; then
        echo "Image $image_repository:$name exists; set REBUILD=1 to rebuild it."
        return 0
    fi
    cleanup
    rootfs=$(mktemp -d "/tmp/ratelimit-rootfs-$name.XXXXXX")

    echo "Bootstrapping Debian $suite into $rootfs"
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
        tail -n 20 "$rootfs.log" >&2
        echo "debootstrap of $suite failed; the full log is $rootfs.log" >&2
        return 1
    }
    rm -f "$rootfs.log"

    # The image trusts the same CAs as the machine that builds it, so pip in
    # the hosts reaches the package index through the same TLS setup.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        # update-ca-certificates warns that the bundle is not a single
        # certificate; that is expected and harmless.
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    # A host that boots in a container has no consoles or udev to wait for.
    chroot "$rootfs" systemctl mask getty.target systemd-udevd.service \
        systemd-udev-trigger.service systemd-firstboot.service >/dev/null 2>&1 || true
    : >"$rootfs/etc/machine-id"
    rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*

    tar -C "$rootfs" -c . | docker import \
        -c 'CMD ["/lib/systemd/systemd"]' \
        -c 'ENV container=docker' \
        - "$image_repository:$name" >/dev/null
    echo "Built $image_repository:$name"
}

main() {
    local names=("$@")
    [[ ${#names[@]} -gt 0 ]] || names=(debian12 debian13)
    for name in "${names[@]}"; do
        build_image "$name"
    done
}

main "$@"
