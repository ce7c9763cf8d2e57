#!/usr/bin/env bash
# The main job end to end on a sample store this script creates: builds the release
# binary (minutes the first time; it lands in target/x86_64-unknown-linux-gnu/release/),
# makes a Nix-shaped store (default 1,000 store paths with every hard case), seeds it into
# an empty target (cold: as root, the page cache is dropped first; progress every 200 ms
# so that a short seed shows some), seeds again (the no-op every later pod start does),
# shows `status`, and times `cp -a` of the same store as a baseline.
#
# DIR (default ${TMPDIR:-/tmp}/nix-seed-demo) is deleted and made again at every run.
# --no-drop-caches keeps the machine's page cache (a warm run): dropping it slows every
# other program on the machine for a while.
#
#   scripts/demo.sh [--paths N] [--dir DIR] [--no-drop-caches]
set -euo pipefail
cd "$(dirname "$0")/.."
paths=1000
dir="${TMPDIR:-/tmp}/nix-seed-demo"
drop=1
while [ $# -gt 0 ]; do
  case "$1" in
    --paths) paths="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --no-drop-caches) drop=0; shift ;;
    *) echo "usage: $0 [--paths N] [--dir DIR] [--no-drop-caches]" >&2; exit 2 ;;
  esac
done

bin=target/x86_64-unknown-linux-gnu/release/nix-seed
mk=target/x86_64-unknown-linux-gnu/release/examples/make_store
echo "== building the release binary (the first build takes minutes): $bin"
cargo build --release --quiet --bin nix-seed --example make_store

if [ -d "$dir" ]; then chmod -R u+w "$dir" 2>/dev/null || true; rm -rf "$dir"; fi
mkdir -p "$dir/image" "$dir/mnt/nix" "$dir/cp-baseline"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
drop_caches() {
  if [ "$drop" = 0 ]; then
    echo "(--no-drop-caches: page cache kept, this is a warm run)"
  elif [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then
    echo "(dropping the page cache of the whole machine, echo 3 > /proc/sys/vm/drop_caches, for a cold run;" \
      "--no-drop-caches skips it)"
    sync; echo 3 > /proc/sys/vm/drop_caches
  else
    echo "(not root: page cache kept, this is a warm run)"
  fi
}

echo
echo "== sample store in $dir/image/nix (replacing $dir)"
"$mk" "$dir/image/nix" --paths "$paths"

# A real target is a mounted volume; here it is a plain directory, hence the flag.
echo
echo "== first seed into the empty target $dir/mnt/nix"
drop_caches
t0=$(now)
# Progress lines every 200 ms instead of the default 5 s: the demo's seed takes about a second.
NIX_SEED_PROGRESS_INTERVAL=200ms \
  "$bin" seed --source "$dir/image/nix" --target "$dir/mnt/nix" --allow-non-mountpoint --progress log
t_seed=$(secs "$t0" "$(now)")

echo
echo "== second seed: the no-op every later pod start does"
t0=$(now)
"$bin" seed --source "$dir/image/nix" --target "$dir/mnt/nix" --allow-non-mountpoint
t_noop=$(secs "$t0" "$(now)")

echo
echo "== status"
"$bin" status --source "$dir/image/nix" --target "$dir/mnt/nix"

echo
echo "== baseline: cp -a of the same store"
drop_caches
t0=$(now)
cp -a "$dir/image/nix/store" "$dir/cp-baseline/"
t_cp=$(secs "$t0" "$(now)")

echo
echo "== timings (wall clock, this run)"
echo "nix-seed first seed: ${t_seed}s"
echo "cp -a:               ${t_cp}s   (ratio cp/nix-seed: $(awk -v a="$t_cp" -v b="$t_seed" 'BEGIN { printf "%.2f", a / b }'))"
echo "nix-seed no-op:      ${t_noop}s"
echo "(sample store and target left in $dir)"
