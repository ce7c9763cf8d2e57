#!/usr/bin/env bash
# The whole test suite: the release binaries (scripts/release.sh: x86_64, and aarch64 for
# tests/it/arm64.rs, run under qemu-aarch64-static), unit and integration tests (exactness,
# concurrency, crashes, bad input, non-root, ext4/xfs/btrfs/tmpfs targets, static binary,
# aarch64), then the release build checked for static linking and size. tests/it/netfs.rs leaves the GlusterFS/sshfs harness
# up for speed: `scripts/netfs.sh down` takes it down (.ci/run does). Also lints the Dockerfile and validates the
# Kubernetes examples (hadolint, kubernetes-validate, shellcheck: installed from PyPI).
# Real Nix checks seeded stores in two versions: the host's Debian 12 nix-bin (2.8) and
# Debian trixie's (2.26), debootstrapped once by scripts/modern-nix.sh setup (cached).
#
# Needs root (mounts, chown, chroot, switching users). Missing Debian packages are
# installed when running as root with apt-get; otherwise the script stops and names them.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v mkfs.xfs   >/dev/null || need_pkgs+=(xfsprogs)
command -v mkfs.btrfs >/dev/null || need_pkgs+=(btrfs-progs)
command -v mkfs.ext4  >/dev/null || need_pkgs+=(e2fsprogs)
command -v file       >/dev/null || need_pkgs+=(file)
command -v losetup    >/dev/null || need_pkgs+=(mount)
command -v nix-store  >/dev/null || need_pkgs+=(nix-bin)     # real Nix: the oracle for store validity
command -v unshare    >/dev/null || need_pkgs+=(util-linux)
# Debian trixie's Nix 2.26 next to the host's 2.8, for tests/it/modern_nix.rs.
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need_pkgs+=(debootstrap debian-archive-keyring)
command -v strace     >/dev/null || need_pkgs+=(strace)      # tests/it/live_store.rs: a slowed-down garbage collection
command -v qemu-aarch64-static >/dev/null || need_pkgs+=(qemu-user-static) # tests/it/arm64.rs: the aarch64 binary
# Container images for tests/it/archive.rs: built by buildah, saved by podman, copied by
# skopeo; zstd-compressed layers.
command -v buildah    >/dev/null || need_pkgs+=(buildah)
command -v podman     >/dev/null || need_pkgs+=(podman)
command -v skopeo     >/dev/null || need_pkgs+=(skopeo)
command -v zstd       >/dev/null || need_pkgs+=(zstd)
# GlusterFS and sshfs for tests/it/netfs.rs (scripts/netfs.sh brings them up on loopback).
command -v glusterd   >/dev/null || need_pkgs+=(glusterfs-server)
command -v glusterfs  >/dev/null || need_pkgs+=(glusterfs-client)
command -v sshfs      >/dev/null || need_pkgs+=(sshfs)
[ -x /usr/sbin/sshd ]            || need_pkgs+=(openssh-server)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "test.sh: missing prerequisites: ${need_pkgs[*]} (apt-get install ${need_pkgs[*]})" >&2
    exit 1
  fi
fi
if [ "$(id -u)" != 0 ]; then
  echo "test.sh: WARNING: not root: tests that mount filesystems, chown or chroot will be reported as SKIPPED" >&2
  [ -n "${CI:-}" ] && { echo "test.sh: CI must run as root" >&2; exit 1; }
fi

# Linters for the Dockerfile and the Kubernetes examples (pinned, from PyPI).
bash scripts/install-test-tools.sh

# Scratch space for fixtures: the build directory's filesystem, not a small tmpfs /tmp.
export NIX_SEED_TEST_DIR="${NIX_SEED_TEST_DIR:-$PWD/target/test-scratch}"
mkdir -p "$NIX_SEED_TEST_DIR"

# Nix 2.26 for tests/it/modern_nix.rs: a Debian trixie tree, debootstrapped once into
# $NIX_SEED_TRIXIE (default /var/cache/nix-seed/trixie) and reused; fails loudly if the
# mirror is unreachable. Needs root (the tests that use it need root too).
if [ "$(id -u)" = 0 ]; then
  bash scripts/modern-nix.sh setup
fi

# The release binaries (scripts/release.sh: dist/), the aarch64 one for tests/it/arm64.rs,
# which runs it under qemu-aarch64-static. NIX_SEED_AARCH64_BIN=PATH: use that one instead.
# The cross tree apt-gets from testing, whose Release files expire a week after they are
# signed: a frozen mirror needs NIX_SEED_APT_NO_VALID_UNTIL=1, the default here (a test
# build, not a release).
if [ -z "${NIX_SEED_AARCH64_BIN:-}" ] && [ "$(id -u)" = 0 ]; then
  NIX_SEED_APT_NO_VALID_UNTIL=${NIX_SEED_APT_NO_VALID_UNTIL:-1} bash scripts/release.sh --no-check
  export NIX_SEED_AARCH64_BIN=$PWD/dist/nix-seed-aarch64-linux
fi

# Two test threads: the machines have two cores, and the crash/lock tests time things.
cargo test --locked -- --test-threads=2

cargo build --locked --release
bin=target/x86_64-unknown-linux-gnu/release/nix-seed
file -L "$bin"
file -L "$bin" | grep -Eq 'statically linked|static-pie linked' || { echo "test.sh: release binary is not static" >&2; exit 1; }
size=$(stat -c %s "$bin")
echo "release binary: $size bytes"
[ "$size" -lt $((8 * 1024 * 1024)) ] || { echo "test.sh: release binary is over 8 MiB" >&2; exit 1; }
echo "test.sh: all tests passed"
