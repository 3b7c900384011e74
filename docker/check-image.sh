#!/usr/bin/env bash
# Build the CPU image from docker/requirements.lock with podman, run `adaptor run` on a tiny
# config inside it, and print one JSON line on stdout:
#
#   {"image_built": true, "run_exit": 0, "image_mb": …, "build_s": …, "run_s": …, …}
#
# Usage, as root, from anywhere (the build context is the repository root):
#
#   docker/make-base.sh          # once: the local stand-in base, adaptor-base:bookworm
#   docker/check-image.sh
#
# Environment: BASE_IMAGE (default localhost/adaptor-base:bookworm; any local image with
# Python 3.11 as python3, e.g. python:3.11.7-slim-bookworm where a registry is reachable and
# PULL=1), CHECK_CONFIG (default docker/check-config.yaml), IMAGE_TAG (default adaptor:check),
# PODMAN_STORAGE_DRIVER (default vfs), KEEP_IMAGE=1 (keep the image; by default it is
# removed at the end, since vfs stores it uncompressed, ~7.4 GB), KEEP_OUTPUT=1 (keep the
# run's /data_shards, printed on stderr), SKIP_BUILD=1 (run an existing IMAGE_TAG, e.g. one
# kept with KEEP_IMAGE=1, without rebuilding), CA_BUNDLE (the CA bundle pip uses inside the
# build; default: $PIP_CERT, $SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt, so a
# TLS-intercepting proxy this machine trusts is trusted there too). Build and run logs go to
# stderr. Exit status: 0 built and ran; 1 the build or the run failed (the JSON line says
# which); 2 something missing before any work (podman, root, the base image, a lock that
# matches pyproject.toml), with a message and no JSON line.
#
# How the image is built: `podman build --isolation chroot --layers=false`. chroot isolation
# needs no user namespaces or OCI runtime, so it works in sandboxes where `podman run` does
# not; --layers=false commits one layer over the base instead of one per instruction, which
# with the vfs driver (a full copy of the tree per layer) saves tens of GB. The Dockerfile is
# the one users build with Docker; only the base differs (BASE_IMAGE).
#
# How it is run: NOT `podman run`, which this sandbox refuses (the OCI runtime's setrlimit
# fails), and not a smoke RUN step in the Dockerfile (that would run as root, at build time,
# with the build's mounts, not the image's USER/ENTRYPOINT). Instead, the committed image is
# mounted (`podman image mount`) and entered the way a container runtime would, with
# `unshare --mount --pid --fork` + `chroot`:
#   - the image's tree is bind-mounted READ-ONLY (nothing the run does can change the image;
#     like `docker run --read-only`), with fresh tmpfs on /tmp, /var/tmp, /run, the user's
#     HOME and /dev/shm (2 GB, as compose's shm_size), a minimal /dev (null, zero, full,
#     random, urandom, tty), a new /proc for the new PID namespace, /sys read-only, and a
#     scratch host folder bind-mounted writable at /data_shards (the image's VOLUME);
#   - the command is the image's own ENTRYPOINT, run as its USER (uid/gid from the image's
#     /etc/passwd), in its WORKDIR, with only its ENV (env -i) and HOME: `adaptor run
#     --config /tmp/check-config.yaml --out /data_shards --no-progress` (the config is copied
#     into the run's /tmp; the image holds no docker/ files besides the lock). When it exits,
#     the PID namespace ends and takes every process it started (Ray's too) with it.
# The network namespace is the host's (docker's default bridge would also give the run a
# working loopback, all Ray needs here; nothing is downloaded: HF_HUB_OFFLINE=1).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="${BASE_IMAGE:-localhost/adaptor-base:bookworm}"
TAG="${IMAGE_TAG:-adaptor:check}"
CONFIG="${CHECK_CONFIG:-$REPO/docker/check-config.yaml}"
DRIVER="${PODMAN_STORAGE_DRIVER:-vfs}"
PODMAN=(podman --storage-driver "$DRIVER")
PYTHON="${PYTHON:-python3}"

die() { echo "check-image.sh: $*" >&2; exit 2; }
log() { echo "check-image.sh: $*" >&2; }

# --- checks before any work ------------------------------------------------------------------
command -v podman > /dev/null \
    || die "podman is missing (Debian/Ubuntu: apt-get install podman; it builds without a Docker engine)"
for tool in unshare chroot mount "$PYTHON"; do
    command -v "$tool" > /dev/null || die "$tool is missing"
done
[[ $(id -u) == 0 ]] || die "run as root: mounting the image and chroot need it"
[[ -f "$CONFIG" ]] || die "no config $CONFIG"
lock_rc=0
"$PYTHON" "$REPO/docker/check-lock.py" >&2 || lock_rc=$?
if [[ $lock_rc == 1 ]]; then
    die "docker/requirements.lock does not match pyproject.toml (see above); nothing built"
elif [[ $lock_rc != 0 ]]; then
    die "could not check docker/requirements.lock against pyproject.toml (see above)"
fi
if ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    if [[ "${PULL:-0}" == 1 ]]; then
        "${PODMAN[@]}" pull "$BASE_IMAGE" >&2 || die "could not pull $BASE_IMAGE"
    else
        die "base image $BASE_IMAGE not found in podman's $DRIVER store: make it with
  docker/make-base.sh                       (from Debian's packages; no registry needed)
or set BASE_IMAGE to a local image with Python 3.11 (PULL=1 to pull it from a registry)"
    fi
fi
locked_python="$(sed -n 's/.*--python-version \([0-9.]*\).*/\1/p' "$REPO/docker/requirements.lock" | head -1)"

WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/adaptor-check.XXXXXX")"
image_mounted=0
cleanup() {
    if [[ $image_mounted == 1 ]]; then
        "${PODMAN[@]}" image unmount "$TAG" > /dev/null 2>&1 || true
    fi
    if [[ "${KEEP_IMAGE:-0}" != 1 ]]; then
        "${PODMAN[@]}" rmi --force "$TAG" > /dev/null 2>&1 || true
    fi
    if [[ "${KEEP_OUTPUT:-0}" == 1 ]]; then
        log "the run's /data_shards and logs are in $WORK"
    else
        rm -rf --one-file-system "$WORK"
    fi
}
trap cleanup EXIT

# the base's Python must be the lock's (wheels are resolved for one Python)
base_root="$("${PODMAN[@]}" image mount "$BASE_IMAGE")"
base_python="$(chroot "$base_root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)"
"${PODMAN[@]}" image unmount "$BASE_IMAGE" > /dev/null
[[ "$base_python" == "$locked_python" ]] \
    || die "$BASE_IMAGE has Python $base_python as python3; docker/requirements.lock is for $locked_python"

json() {  # image_built run_exit image_mb build_s run_s
    printf '{"image_built": %s, "run_exit": %s, "image_mb": %s, "build_s": %s, "run_s": %s, "base_image": "%s", "python": "%s", "storage_driver": "%s"}\n' \
        "$1" "$2" "$3" "$4" "$5" "$BASE_IMAGE" "$base_python" "$DRIVER"
}

# --- build ------------------------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" == 1 ]] && "${PODMAN[@]}" image exists "$TAG"; then
    log "SKIP_BUILD=1: running the existing $TAG (build_s is null)"
    build_s=null
else
    # pip inside the build trusts only its own CA list; where this machine trusts more (a
    # TLS-intercepting proxy's CA), hand the machine's bundle in as the Dockerfile's `ca`
    # build secret: used by pip, never stored in the image. CA_BUNDLE= (empty) hands none.
    ca_bundle="${CA_BUNDLE-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}"
    secret=()
    if [[ -n "$ca_bundle" && -s "$ca_bundle" ]]; then
        secret=(--secret "id=ca,src=$ca_bundle")
    fi
    log "building $TAG on $BASE_IMAGE (CA bundle for pip: ${ca_bundle:-none})"
    start=$(date +%s.%N)
    set +e
    "${PODMAN[@]}" build --isolation chroot --layers=false --force-rm --pull=never \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" "${secret[@]}" \
        -f "$REPO/docker/Dockerfile" -t "$TAG" "$REPO" \
        2>&1 | tee "$WORK/build.log" >&2
    build_rc=${PIPESTATUS[0]}
    set -e
    build_s=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
    if [[ $build_rc != 0 ]]; then
        log "build failed (exit $build_rc) after ${build_s} s (the log is above)"
        json false null null "$build_s" null
        exit 1
    fi
fi
image_mb=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.0f", $1 / 1e6 }')
log "$TAG: ${image_mb} MB (build: ${build_s} s)"

# --- run: the image's entrypoint as its user, in a read-only chroot ----------------------------
inspect() { "${PODMAN[@]}" image inspect --format "$1" "$TAG"; }
mapfile -t image_env < <(inspect '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
entrypoint_json="$(inspect '{{json .Config.Entrypoint}}')"
mapfile -t entrypoint < <("$PYTHON" -c 'import json, sys; print(*json.loads(sys.argv[1]) or [], sep="\n")' "$entrypoint_json")
image_user="$(inspect '{{.Config.User}}')"
workdir="$(inspect '{{.Config.WorkingDir}}')"
[[ ${#entrypoint[@]} -gt 0 ]] || die "$TAG has no ENTRYPOINT"

root="$("${PODMAN[@]}" image mount "$TAG")"
image_mounted=1
user="${image_user:-root}"
uid=$(awk -F: -v u="${user%%:*}" '$1 == u || $3 == u { print $3; exit }' "$root/etc/passwd")
gid=$(awk -F: -v u="${user%%:*}" '$1 == u || $3 == u { print $4; exit }' "$root/etc/passwd")
home=$(awk -F: -v u="${user%%:*}" '$1 == u || $3 == u { print $6; exit }' "$root/etc/passwd")
[[ -n "$uid" && -n "$gid" ]] || die "user $user of $TAG is not in its /etc/passwd"
mkdir -p "$WORK/data_shards"
chown "$uid:$gid" "$WORK/data_shards"
run_cmd=("${entrypoint[@]}" run --config /tmp/check-config.yaml --out /data_shards --no-progress)
log "running as $user ($uid:$gid) in $workdir: ${run_cmd[*]} (log: $WORK/run.log)"

# shellcheck disable=SC2016  # expanded by the inner shell
inner='
set -eu
R="$1"; CONFIG="$2"; OUT="$3"; HOME_DIR="$4"; UID_GID="$5"; WORKDIR="$6"; shift 6
mount --bind "$R" "$R"
mount -o remount,bind,ro "$R"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount -o remount,bind,ro "$R/sys"
mount -t tmpfs -o mode=755,size=64m dev "$R/dev"
for node in null zero full random urandom tty; do
    touch "$R/dev/$node"
    mount --bind "/dev/$node" "$R/dev/$node"
done
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mkdir "$R/dev/shm" "$R/dev/pts"
mount -t tmpfs -o mode=1777,size=2g shm "$R/dev/shm"
for dir in /tmp /var/tmp; do mount -t tmpfs -o mode=1777 tmpfs "$R$dir"; done
mount -t tmpfs -o mode=755 tmpfs "$R/run"
if [ -n "$HOME_DIR" ] && [ "$HOME_DIR" != / ] && [ -d "$R$HOME_DIR" ]; then
    mount -t tmpfs -o "mode=755,uid=${UID_GID%:*},gid=${UID_GID#*:}" home "$R$HOME_DIR"
fi
mount --bind "$OUT" "$R/data_shards"
install -m 644 "$CONFIG" "$R/tmp/check-config.yaml"
exec chroot --userspec="$UID_GID" "$R" /usr/bin/env --chdir="$WORKDIR" "$@"
'
start=$(date +%s.%N)
set +e
unshare --mount --pid --fork --propagation private \
    bash -c "$inner" inner "$root" "$CONFIG" "$WORK/data_shards" "$home" "$uid:$gid" "${workdir:-/}" \
    -i "${image_env[@]}" "HOME=${home:-/}" "${run_cmd[@]}" \
    2>&1 | tee "$WORK/run.log" >&2
run_exit=${PIPESTATUS[0]}
set -e
run_s=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
log "adaptor run exited $run_exit after ${run_s} s"

# what a finished run leaves (the same files tests/cli/test_run_end_to_end.py checks)
if [[ $run_exit == 0 ]]; then
    runs="$WORK/data_shards/runs/synthetic"
    for f in pretrain/adaptor/model.safetensors downstream/results.md index/manifest.json; do
        if [[ ! -s "$runs/$f" ]]; then
            log "the run exited 0 but left no $f"
            run_exit=3
        fi
    done
fi
json true "$run_exit" "$image_mb" "$build_s" "$run_s"
[[ $run_exit == 0 ]]
