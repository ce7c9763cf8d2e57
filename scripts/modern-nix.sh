#!/usr/bin/env bash
# A modern Nix (Debian trixie's nix-bin, Nix 2.26) next to the host's Debian 12 Nix 2.8,
# for tests that check a seeded store with both versions (tests/it/modern_nix.rs).
#
#   scripts/modern-nix.sh setup
#       debootstrap Debian trixie (minbase + nix-bin, libdbi-perl, sqlite3) into
#       $NIX_SEED_TRIXIE (default /var/cache/nix-seed/trixie), once: a complete tree
#       has a stamp file and is reused. Prints the Nix version and the time taken.
#   scripts/modern-nix.sh run [--bind DIR]... NIXROOT|- -- CMD [ARG...]
#       run CMD in the trixie tree with NIXROOT (a directory holding store/ and var/)
#       bind-mounted at /nix ("-": none), in a private mount namespace entered with
#       pivot_root (Nix 2.26's build sandbox fails in a chroot). /proc, /sys and /dev
#       are mounted; this repository, $NIX_SEED_TEST_DIR and each DIR appear at their
#       host paths. The tree is an overlay with a tmpfs upper layer: whatever CMD writes
#       outside the bound directories is thrown away. Exit status: CMD's.
#   scripts/modern-nix.sh make-real-store [OPTIONS] ROOT [v1|v2]
#       scripts/make-real-store.sh (same arguments) run by Nix 2.26 in the tree, ROOT
#       bound at its host path: the same store Nix 2.8 builds, made by 2.26.
#   scripts/modern-nix.sh path      print the tree's directory (after setup)
#
# Env: NIX_SEED_TRIXIE (tree), NIX_SEED_TRIXIE_MIRROR (default http://deb.debian.org/debian).
# Needs root, unshare and pivot_root (util-linux), and debootstrap for setup.
# Fails loudly (exit 1, one message naming the cause) when debootstrap or the mirror is
# unavailable; it never skips.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd -P)
tree=${NIX_SEED_TRIXIE:-/var/cache/nix-seed/trixie}
mirror=${NIX_SEED_TRIXIE_MIRROR:-http://deb.debian.org/debian}
suite=trixie
packages=nix-bin,libdbi-perl,sqlite3
stamp_name=.nix-seed-complete
# What a complete tree was made with: a tree made with other packages is rebuilt.
stamp_key="suite=$suite variant=minbase include=$packages"

die() { echo "modern-nix: $*" >&2; exit 1; }
usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mount namespaces, pivot_root)"; }

complete() { [ -f "$tree/$stamp_name" ] && [ "$(sed -n 1p "$tree/$stamp_name")" = "$stamp_key" ]; }

# Unmount whatever a failed debootstrap left mounted below $1 (it mounts proc and sys).
umount_below() {
  local m
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" || true; done
}

setup() {
  need_root
  if complete; then
    echo "modern-nix: $tree is complete ($(sed -n 2p "$tree/$stamp_name")), reused"
    return 0
  fi
  mkdir -p "$(dirname "$tree")"
  # One setup at a time (tests run on several threads and may all ask for it).
  exec 9>"$tree.lock"
  flock 9
  if complete; then
    echo "modern-nix: $tree is complete ($(sed -n 2p "$tree/$stamp_name")), reused"
    return 0
  fi
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] ||
    die "debootstrap is not installed (apt-get install debootstrap): cannot build the Debian $suite tree for Nix 2.26"
  command -v unshare >/dev/null 2>&1 && command -v pivot_root >/dev/null 2>&1 ||
    die "unshare and pivot_root (util-linux) are needed"
  local start part log
  start=$(date +%s.%N)
  part=$tree.partial
  log=$tree.debootstrap.log
  if [ -e "$part" ]; then
    umount_below "$part"
    rm -rf --one-file-system "$part"
  fi
  if [ -e "$tree" ]; then
    echo "modern-nix: $tree is incomplete or outdated (no stamp or another one): rebuilding it" >&2
    umount_below "$tree"
    rm -rf --one-file-system "$tree"
  fi
  echo "modern-nix: debootstrap $suite ($packages) from $mirror into $tree ..." >&2
  if ! PATH=$PATH:/usr/sbin:/sbin debootstrap --variant=minbase --include="$packages" \
    "$suite" "$part" "$mirror" >"$log" 2>&1; then
    umount_below "$part"
    tail -n 15 "$log" >&2
    die "debootstrap of Debian $suite from $mirror FAILED (mirror unreachable, trixie's release key missing: apt-get install debian-archive-keyring, or a package missing?); full log: $log"
  fi
  umount_below "$part"
  # The smoke test: Nix runs (it needs /proc) in the tree entered the way `run` does.
  local version
  version=$(NIX_SEED_TRIXIE=$part "$0" run - -- nix-store --version) ||
    die "nix-store does not run in the new $suite tree $part"
  case "$version" in
    *"(Nix) 2."*) ;;
    *) die "unexpected nix-store --version in the $suite tree: $version" ;;
  esac
  printf '%s\n%s\n' "$stamp_key" "$version" >"$part/$stamp_name"
  mv "$part" "$tree"
  awk -v a="$start" -v b="$(date +%s.%N)" -v v="$version" -v t="$tree" \
    'BEGIN { printf "modern-nix: %s ready in %s, took %.1fs\n", v, t, b - a }'
}

# `run`, on the host: parse, check, then re-enter this script in a new mount namespace.
run() {
  need_root
  local binds=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --bind) [ $# -ge 2 ] || usage; binds+=("$2"); shift 2 ;;
      --bind=*) binds+=("${1#--bind=}"); shift ;;
      --) usage ;;
      -*) [ "$1" = - ] && break; die "run: unknown option $1" ;;
      *) break ;;
    esac
  done
  [ $# -ge 3 ] && [ "$2" = -- ] || usage
  local nixroot=$1
  shift 2
  [ -f "$tree/$stamp_name" ] || [ "${tree%.partial}" != "$tree" ] ||
    die "no complete Debian $suite tree at $tree: run \`$0 setup\` first"
  [ -x "$tree/usr/bin/nix-store" ] || die "$tree has no usr/bin/nix-store"
  if [ "$nixroot" != - ]; then
    [ -d "$nixroot" ] || die "NIXROOT $nixroot is not a directory"
    nixroot=$(cd "$nixroot" && pwd -P)
  fi
  local all=("$repo") b
  [ -n "${NIX_SEED_TEST_DIR:-}" ] && [ -d "$NIX_SEED_TEST_DIR" ] && all+=("$NIX_SEED_TEST_DIR")
  for b in "${binds[@]}"; do
    [ -d "$b" ] || die "--bind $b is not a directory"
    all+=("$(cd "$b" && pwd -P)")
  done
  local work rc=0
  work=$(mktemp -d "${TMPDIR:-/tmp}/modern-nix.XXXXXX")
  # Private propagation: nothing mounted in the namespace leaks out, and pivot_root
  # accepts the new root.
  unshare --mount --propagation private -- \
    "$0" __inside "$work" "$nixroot" "$PWD" "${#all[@]}" "${all[@]}" "$@" || rc=$?
  rmdir "$work" 2>/dev/null || true
  return "$rc"
}

# In the new mount namespace (still the host's root): assemble the root, pivot into it.
inside() {
  local work=$1 nixroot=$2 cwd=$3 n=$4
  shift 4
  local binds=("${@:1:$n}")
  shift "$n"
  local root=$work/root
  mount -t tmpfs -o mode=0755 modern-nix "$work"
  mkdir -p "$work/upper" "$work/work" "$root"
  if ! mount -t overlay overlay -o "lowerdir=$tree,upperdir=$work/upper,workdir=$work/work" "$root" 2>/dev/null; then
    # No overlayfs: the tree itself (mount points below are created in it and stay).
    echo "modern-nix: overlayfs unavailable, using $tree directly" >&2
    mount --bind "$tree" "$root"
  fi
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
  mkdir -p "$root/nix"
  [ "$nixroot" = - ] || mount --bind "$nixroot" "$root/nix"
  local b
  for b in "${binds[@]}"; do
    mkdir -p "$root$b"
    mount --rbind "$b" "$root$b"
  done
  mkdir -p "$root/.old-root"
  cd "$root"
  # pivot_root moves this shell's root and cwd too; from here on, commands are trixie's.
  pivot_root . .old-root || die "pivot_root into $root failed"
  umount -l /.old-root
  rmdir /.old-root
  cd "$cwd" 2>/dev/null || cd /
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
  unset TMPDIR NIX_REMOTE NIX_PATH
  exec "$@"
}

# make-real-store.sh in the tree, its ROOT (the first non-option argument) bound.
make_store() {
  local a root=
  for a in "$@"; do
    case "$a" in -*) ;; *) root=$a; break ;; esac
  done
  [ -n "$root" ] || die "make-real-store: ROOT missing"
  mkdir -p "$root"
  run --bind "$root" - -- bash "$repo/scripts/make-real-store.sh" "$@"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
  setup) [ $# = 0 ] || usage; setup ;;
  run) run "$@" ;;
  make-real-store) make_store "$@" ;;
  path) [ $# = 0 ] || usage; complete || die "no complete tree at $tree (run setup)"; echo "$tree" ;;
  __inside) inside "$@" ;;
  -h|--help|help) usage ;;
  *) echo "modern-nix: unknown command $cmd" >&2; usage ;;
esac
