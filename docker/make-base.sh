#!/usr/bin/env bash
# Make a local stand-in for the official Python base image, from Debian's own packages.
#
# For machines that reach Debian's package mirror but no image registry (so `FROM python:…`
# cannot be pulled): debootstrap a minimal Debian bookworm with python3 (3.11, the Python of
# docker/requirements.lock), python3-venv and python3-pip, and import its tree into podman's
# image store as one layer. docker/Dockerfile then builds on it with
#
#   podman --storage-driver vfs build --isolation chroot \
#       --build-arg BASE_IMAGE=localhost/adaptor-base:bookworm -f docker/Dockerfile .
#
# (docker/check-image.sh does exactly that). Needs root (debootstrap chroots and creates
# device nodes), debootstrap and podman. Usage:
#
#   docker/make-base.sh [IMAGE]        # default IMAGE: adaptor-base:bookworm
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SUITE (default
# bookworm), PODMAN_STORAGE_DRIVER (default vfs: works without overlay mounts or fuse;
# every podman command on this store must use the same driver), FORCE=1 to rebuild an
# existing image.
set -euo pipefail

IMAGE="${1:-adaptor-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${DEBIAN_SUITE:-bookworm}"
DRIVER="${PODMAN_STORAGE_DRIVER:-vfs}"
PODMAN=(podman --storage-driver "$DRIVER")

die() { echo "make-base.sh: $*" >&2; exit 1; }

command -v podman > /dev/null || die "podman is missing (Debian: apt-get install podman)"
command -v debootstrap > /dev/null || die "debootstrap is missing (Debian: apt-get install debootstrap)"
[[ $(id -u) == 0 ]] || die "debootstrap needs root (run as root or under sudo)"

if "${PODMAN[@]}" image exists "$IMAGE" && [[ "${FORCE:-0}" != 1 ]]; then
    echo "make-base.sh: $IMAGE already exists (FORCE=1 to rebuild)" >&2
    exit 0
fi

ROOT="$(mktemp -d "${TMPDIR:-/var/tmp}/adaptor-base.XXXXXX")"
trap 'rm -rf --one-file-system "$ROOT"' EXIT

echo "make-base.sh: debootstrap $SUITE from $MIRROR into $ROOT" >&2
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip \
    "$SUITE" "$ROOT" "$MIRROR" >&2 \
    || die "debootstrap failed (is $MIRROR reachable? see $ROOT/debootstrap/debootstrap.log)"

# what a Docker base image leaves out: downloaded packages, package lists, logs, and this
# machine's network identity (a container runtime provides its own)
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* \
    "$ROOT"/var/log/* "$ROOT"/tmp/* "$ROOT"/debootstrap
printf '' > "$ROOT/etc/resolv.conf"
printf 'localhost\n' > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
# mktemp made the tree's root 0700, and tar records it: / must be traversable by the image's
# non-root user
chmod 0755 "$ROOT"
python_version="$(chroot "$ROOT" python3 -c 'import sys; print(sys.version.split()[0])')"
"${PODMAN[@]}" rmi --force "$IMAGE" > /dev/null 2>&1 || true
tar --numeric-owner -C "$ROOT" -c . \
    | "${PODMAN[@]}" import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "debootstrap --variant=minbase $SUITE + python3, python3-venv, python3-pip" \
        - "$IMAGE" > /dev/null
size_mb="$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%d", $1 / 1e6}')"
echo "make-base.sh: $IMAGE ready (Debian $SUITE, Python $python_version, ${size_mb} MB)" >&2
