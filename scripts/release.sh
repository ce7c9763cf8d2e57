#!/usr/bin/env bash
# Release binaries: static, stripped nix-seed for x86_64 and aarch64 Linux, and their sums.
#
#   scripts/release.sh [--no-check]
#
#   dist/nix-seed-x86_64-linux    cargo build --release --locked on the host (the toolchain
#                                 of .cargo/config.toml: x86_64-unknown-linux-gnu, crt-static)
#   dist/nix-seed-aarch64-linux   cross-built in a Debian testing (forky) tree with Debian's
#                                 rustc and cargo, libstd-rust-dev:arm64 (the aarch64
#                                 standard library: rustup has no other targets here) and
#                                 gcc-aarch64-linux-gnu, crt-static (.cargo/config.toml)
#   dist/SHA256SUMS               sha256sum of both, `sha256sum -c` in dist/ checks them
#
# Then (unless --no-check) the aarch64 binary is run under qemu-aarch64-static (no binfmt):
# --version, and a seed of a small sample store (tools/make_store.rs) whose result must be
# identical (contents; modes, owners, hard links; the store paths' mtimes) to the x86_64 seed.
#
# Needs root (apt-get, debootstrap, mount namespaces, chroot), a host cargo (rustup or
# Debian's; the one the tests use) and network access to the Debian mirror and crates.io.
# Installs debootstrap, debian-archive-keyring, qemu-user-static, file and rsync with
# apt-get when missing. Idempotent: the Debian tree ($NIX_SEED_CROSS_TREE, default
# /var/cache/nix-seed/forky-cross; NOT the trixie tree of scripts/modern-nix.sh) is
# debootstrapped and provisioned once (a stamp file marks it complete) and the aarch64
# build lives in target/cross-SUITE, so a second run only rebuilds what changed. Crates are
# vendored by the host's cargo (target/vendor) and the tree's cargo builds offline.
#
# Env: NIX_SEED_CROSS_SUITE (default forky, Debian testing; see docs/release.md),
#      NIX_SEED_CROSS_TREE (default /var/cache/nix-seed/SUITE-cross),
#      NIX_SEED_DEBIAN_MIRROR (default http://deb.debian.org/debian),
#      NIX_SEED_APT_NO_VALID_UNTIL=1 (apt accepts expired Release files: frozen mirrors).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd -P)
# Debian testing (forky): trixie's rustc 1.85 cannot build our Cargo.lock (rusqlite 0.41
# needs 1.89, libsqlite3-sys 0.39's build script uses let chains), and trixie-backports'
# rustc and libstd-rust-dev:arm64 are not always the same version. In testing they are:
# a package migrates only once it is built on every release architecture.
suite=${NIX_SEED_CROSS_SUITE:-forky}
tree=${NIX_SEED_CROSS_TREE:-/var/cache/nix-seed/$suite-cross}
mirror=${NIX_SEED_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# 1: apt in the tree accepts a Release file past its Valid-Until (a frozen mirror snapshot).
no_valid_until=${NIX_SEED_APT_NO_VALID_UNTIL:-0}
tree_packages="rustc cargo libstd-rust-dev:arm64 gcc-aarch64-linux-gnu libc6-dev:arm64 file"
stamp_name=.nix-seed-cross-complete
stamp_key="suite=$suite variant=minbase arch=arm64 packages=$tree_packages"
dist=$repo/dist
target_a64=aarch64-unknown-linux-gnu
# A target dir of its own: Debian's rustc 1.85 and the host's toolchain do not share builds.
cross_target_dir=target/cross-$suite
# The crates, vendored on the host (its cargo has crates.io, its CA certificates, its
# proxy settings): the tree's cargo builds offline.
vendor_dir=target/vendor

check=1
case "${1:-}" in
  --no-check) check=0 ;;
  "") ;;
  -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "release: unknown argument $1 (usage: scripts/release.sh [--no-check])" >&2; exit 2 ;;
esac

die() { echo "release: $*" >&2; exit 1; }
log() { echo "release: $*" >&2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, debootstrap, mount namespaces, chroot)"
command -v cargo >/dev/null || die "cargo is not installed on the host (the x86_64 build uses it)"

t_all=$(now)

# --- host packages -----------------------------------------------------------------------
missing=()
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
command -v unshare >/dev/null || missing+=(util-linux)
command -v file >/dev/null || missing+=(file)
command -v rsync >/dev/null || missing+=(rsync)
[ "$check" = 0 ] || command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Unmount whatever a failed debootstrap left mounted below $1 (it mounts proc and sys).
umount_below() {
  local m
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" || true; done
}

# Run a command in tree $1 (chroot in a private mount namespace: /proc, /dev, the host's
# resolv.conf for apt and crates.io, this repository at /src; all gone when it exits).
in_tree() {
  local t=$1
  shift
  # shellcheck disable=SC2016 # expanded by the inner bash
  unshare --mount --propagation private -- /bin/bash -c '
    set -e
    t=$1 r=$2
    shift 2
    mount -t proc proc "$t/proc"
    mount --rbind /dev "$t/dev"
    [ -e "$t/etc/resolv.conf" ] && [ ! -L "$t/etc/resolv.conf" ] || { rm -f "$t/etc/resolv.conf"; : >"$t/etc/resolv.conf"; }
    mount --bind /etc/resolv.conf "$t/etc/resolv.conf"
    mkdir -p "$t/src"
    mount --bind "$r" "$t/src"
    exec chroot "$t" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
  ' in-tree "$t" "$repo" "$@"
}

complete() { [ -f "$tree/$stamp_name" ] && [ "$(sed -n 1p "$tree/$stamp_name")" = "$stamp_key" ]; }

# --- the Debian tree with Debian's Rust and the arm64 standard library ----------------------
setup_tree() {
  if complete; then
    log "$tree is complete ($(sed -n 2p "$tree/$stamp_name")), reused"
    return 0
  fi
  local t0 part=$tree.partial
  t0=$(now)
  mkdir -p "$(dirname "$tree")"
  if [ -e "$part" ]; then umount_below "$part"; rm -rf --one-file-system "$part"; fi
  if [ -e "$tree" ]; then
    log "$tree is incomplete or outdated: rebuilding it"
    umount_below "$tree"
    rm -rf --one-file-system "$tree"
  fi
  log "debootstrap $suite (minbase) from $mirror into $part ..."
  # An older debootstrap has no script for a newer testing suite: sid's does for it.
  local script=()
  [ -e "/usr/share/debootstrap/scripts/$suite" ] || script=(/usr/share/debootstrap/scripts/sid)
  if ! PATH=$PATH:/usr/sbin:/sbin debootstrap --variant=minbase "$suite" "$part" "$mirror" "${script[@]}" \
    >"$tree.debootstrap.log" 2>&1; then
    umount_below "$part"
    tail -n 15 "$tree.debootstrap.log" >&2
    die "debootstrap of $suite from $mirror failed; full log: $tree.debootstrap.log"
  fi
  umount_below "$part"
  if [ "$no_valid_until" = 1 ]; then
    echo 'Acquire::Check-Valid-Until "false";' >"$part/etc/apt/apt.conf.d/99nix-seed-no-valid-until"
  fi
  log "debootstrap took $(secs "$t0" "$(now)")s; apt-get install $tree_packages ..."
  # shellcheck disable=SC2086 # the package list is split on purpose
  in_tree "$part" /bin/sh -c "dpkg --add-architecture arm64 && apt-get update -qq &&
    apt-get install -y -qq --no-install-recommends $tree_packages >/dev/null && apt-get clean" ||
    die "installing the cross toolchain in $part failed"
  local version
  version=$(in_tree "$part" /bin/sh -c 'rustc --version; cargo --version; aarch64-linux-gnu-gcc --version | head -1' | paste -sd ';')
  printf '%s\n%s\n' "$stamp_key" "$version" >"$part/$stamp_name"
  mv "$part" "$tree"
  log "$tree ready ($version), took $(secs "$t0" "$(now)")s"
}

# --- builds --------------------------------------------------------------------------------
# The tree (network-bound: debootstrap, apt) is made while the host builds (CPU-bound).
t0=$(now)
setup_tree &
tree_pid=$!
log "x86_64: cargo build --release --locked (host toolchain)"
(cd "$repo" && cargo build --release --locked --bin nix-seed) || { kill "$tree_pid" 2>/dev/null; wait; die "the x86_64 build failed"; }
t_x86=$(secs "$t0" "$(now)")
wait "$tree_pid" || die "the $suite tree could not be made"
t_tree=$(secs "$t0" "$(now)")

log "cargo vendor --locked $vendor_dir (host cargo)"
(cd "$repo" && cargo vendor --locked --versioned-dirs --quiet "$vendor_dir" >/dev/null)

t0=$(now)
log "aarch64: cargo build --release --locked --target $target_a64 in $tree"
in_tree "$tree" /usr/bin/env -C /src \
  CARGO_TARGET_DIR="$cross_target_dir" \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
  CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
  AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
  cargo build --release --locked --offline --bin nix-seed --target "$target_a64" \
  --config "source.crates-io.replace-with='vendored'" --config "source.vendored.directory='$vendor_dir'"
t_a64=$(secs "$t0" "$(now)")

mkdir -p "$dist"
# The host build's target directory: $CARGO_TARGET_DIR if set (relative to the repository).
host_target=$(cd "$repo" && realpath -m "${CARGO_TARGET_DIR:-target}")
install -m 0755 "$host_target/x86_64-unknown-linux-gnu/release/nix-seed" "$dist/nix-seed-x86_64-linux"
install -m 0755 "$repo/$cross_target_dir/$target_a64/release/nix-seed" "$dist/nix-seed-aarch64-linux"

# Static and stripped, or no release.
expect() {
  local f=$1 arch=$2 desc
  desc=$(file -b "$f")
  case "$desc" in
    *"$arch"*"static"*"linked"*"stripped"*) ;;
    *) die "$f: expected $arch, statically (or static-pie) linked, stripped; file says: $desc" ;;
  esac
  case "$desc" in *"not stripped"*) die "$f is not stripped: $desc" ;; esac
  log "$(basename "$f"): $desc"
}
expect "$dist/nix-seed-x86_64-linux" "x86-64"
expect "$dist/nix-seed-aarch64-linux" "ARM aarch64"
# The aarch64 binary is at most 1.2 times the x86_64 one's size.
size_x86=$(stat -c %s "$dist/nix-seed-x86_64-linux")
size_a64=$(stat -c %s "$dist/nix-seed-aarch64-linux")
[ $((size_a64 * 10)) -le $((size_x86 * 12)) ] ||
  die "nix-seed-aarch64-linux ($size_a64 bytes) is over 1.2 times nix-seed-x86_64-linux ($size_x86 bytes)"
log "sizes: x86_64 $size_x86 bytes, aarch64 $size_a64 bytes ($(awk -v a="$size_a64" -v x="$size_x86" 'BEGIN { printf "%.2f", a / x }')x)"
(cd "$dist" && sha256sum nix-seed-x86_64-linux nix-seed-aarch64-linux >SHA256SUMS)

# --- check the aarch64 binary under qemu ---------------------------------------------------
t_qemu=-
if [ "$check" = 1 ]; then
  q=qemu-aarch64-static
  v=$("$q" "$dist/nix-seed-aarch64-linux" --version) || die "$q $dist/nix-seed-aarch64-linux --version failed"
  vx=$("$dist/nix-seed-x86_64-linux" --version)
  # The same version, each naming its own architecture: "nix-seed 0.1.0 (aarch64-linux)".
  [ "$v" = "${vx% (x86_64-linux)} (aarch64-linux)" ] && [ "$v" != "$vx" ] ||
    die "--version: aarch64 says '$v', x86_64 '$vx' (expected the same version, each with its architecture)"
  log "under $q: $v"
  work=$(mktemp -d "${TMPDIR:-/tmp}/nix-seed-release.XXXXXX")
  trap 'chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
  (cd "$repo" && cargo run --quiet --locked --example make_store -- "$work/image/nix") >&2
  mkdir -p "$work/x86_64/nix" "$work/aarch64/nix"
  t0=$(now)
  "$dist/nix-seed-x86_64-linux" seed --source "$work/image/nix" --target "$work/x86_64/nix" \
    --allow-non-mountpoint >&2
  t_x86seed=$(secs "$t0" "$(now)")
  t0=$(now)
  "$q" "$dist/nix-seed-aarch64-linux" seed --source "$work/image/nix" --target "$work/aarch64/nix" \
    --allow-non-mountpoint >&2
  t_qemu=$(secs "$t0" "$(now)")
  # Contents, byte for byte (the store, the database, the roots).
  x=$work/x86_64/nix a=$work/aarch64/nix
  diff -r --no-dereference -x .nix-seed "$x" "$a" >&2 ||
    die "the aarch64 seed's contents differ from the x86_64 seed's"
  # The store paths, copied from the image: modes, owners, mtimes, symlinks, hard links
  # (the store directory's own mtime is the seed's time).
  changes=$(rsync -n -a -c -H --itemize-changes "$x/store/" "$a/store/" | grep -v '^\.d\.\.t\.* \./$' || true)
  [ -z "$changes" ] || { echo "$changes" | head -n 20 >&2; die "the aarch64 seed's store metadata differs from the x86_64 seed's"; }
  # All the rest but mtimes (what a seed makes itself, var/nix/db and the roots, has its time).
  changes=$(rsync -n -rlpgoD -c -H --itemize-changes --exclude=/.nix-seed "$x/" "$a/")
  [ -z "$changes" ] || { echo "$changes" | head -n 20 >&2; die "the aarch64 seed's metadata differs from the x86_64 seed's"; }
  # nix-seed's own records: the same files, equal but for the times of the two seeds.
  mask() { (cd "$1/.nix-seed" && find . -type f | sort | while read -r f; do
    echo "== $f"; sed -E 's/"(seeded_at|first_seeded|last_seeded)":"[^"]*"/"\1":"T"/g' "$f"; done); }
  diff <(mask "$x") <(mask "$a") >&2 || die "the aarch64 seed's .nix-seed records differ from the x86_64 seed's"
  [ "$(cd "$x/.nix-seed" && find . -printf '%P %y %m %U %G\n' | sort)" = "$(cd "$a/.nix-seed" && find . -printf '%P %y %m %U %G\n' | sort)" ] ||
    die "the aarch64 seed's .nix-seed tree (types, modes, owners) differs from the x86_64 seed's"
  log "seed under $q took ${t_qemu}s (natively on x86_64: ${t_x86seed}s); its result is identical to the x86_64 seed's"
fi

log "x86_64 build ${t_x86}s, tree ready after ${t_tree}s (made during that build), aarch64 build ${t_a64}s, qemu seed ${t_qemu}s, all $(secs "$t_all" "$(now)")s"
ls -l "$dist" >&2
cat "$dist/SHA256SUMS"
