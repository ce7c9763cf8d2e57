#!/usr/bin/env bash
# Issue 21's benchmark: seeding from an image archive against unpacking its layers.
#
#   scripts/bench.sh --archive [--paths N] [--files N] [--bytes N] [--runs N] [--big-bytes N]
#                              [--skip rss] [--workdir DIR] [--no-build] [--into BENCHMARKS.md]
#
# One synthetic store (tools/bench_store.rs; default 1,200 store paths, 30,000 files,
# 600 MiB, with a var/ and a Nix database) made into docker-archives as dockerTools'
# streamLayeredImage writes them (tests/it/support/mkimage.py: one layer per store path,
# then var/): A with uncompressed layers, B with gzip layers. Each round, into fresh
# empty directories on a tmpfs, the archives' page cache warm: `nix-seed seed --source A`
# against `tar -xf` of A's layers, one after the other, into a directory (the bare cost of
# unpacking, the layers taken out of the archive beforehand, untimed), and the same for B
# against `tar -xzf`; medians of --runs rounds (default 3), the ratios (target: at most
# 1.5); C and D: the same store in one layer, uncompressed and gzip. Then peak RSS (GNU
# time) of seeding a --big-bytes image (default 2400 MiB asked of bench_store, which
# makes a little over 2 GiB; one layer; target: under 100 MiB). Prints a markdown section; --into FILE puts it between
# FILE's `<!-- archive:begin -->` and `<!-- archive:end -->` markers.
set -euo pipefail
cd "$(dirname "$0")/../.."

paths=1200 files=30000 bytes=$((600 * 1024 * 1024)) runs=3 big=$((2400 * 1024 * 1024)) build=1 into="" skip=""
work="${TMPDIR:-/tmp}/nix-seed-bench-archive"
while [ $# -gt 0 ]; do
  case "$1" in
    --paths) paths=$2; shift ;;
    --files) files=$2; shift ;;
    --bytes) bytes=$2; shift ;;
    --big-bytes) big=$2; shift ;;
    --runs) runs=$2; shift ;;
    --skip) skip=$2; shift ;;
    --workdir) work=$2; shift ;;
    --no-build) build=0 ;;
    --into) into=$2; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "archive bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "archive bench: must run as root (tmpfs, chown)" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || { apt-get install -y -qq time >/dev/null; }
if [ "$build" = 1 ]; then
  cargo build --locked --release --quiet
  cargo build --locked --release --quiet --example bench_store
fi
bin=$PWD/target/x86_64-unknown-linux-gnu/release/nix-seed
ex=target/x86_64-unknown-linux-gnu/release/examples
[ -x "$ex/bench_store" ] || ex=target/release/examples
mkimage=tests/it/support/mkimage.py

cleanup() { umount "$work/t" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cleanup
mkdir -p "$work/t" "$work/img"
mount -t tmpfs -o size=12g nix-seed-bench "$work/t"
"$ex/bench_store" "$work/img/nix" --paths "$paths" --files "$files" --bytes "$bytes" >&2
n_paths=$(find "$work/img/nix/store" -mindepth 1 -maxdepth 1 ! -name '.*' | wc -l)
n_files=$(find "$work/img/nix/store" -mindepth 2 ! -type d | wc -l)
mib=$(du -sm --apparent-size "$work/img/nix/store" | cut -f1)
python3 "$mkimage" "$work/img" "$work/a.tar" --format docker
python3 "$mkimage" "$work/img" "$work/b.tar" --format docker --compress gzip
python3 "$mkimage" "$work/img" "$work/c.tar" --format docker --layers one
python3 "$mkimage" "$work/img" "$work/d.tar" --format docker --layers one --compress gzip
# The layers, taken out of each archive in the manifest's order (untimed).
for x in a b c d; do
  mkdir -p "$work/$x.layers"
  tar -C "$work/$x.layers" -xf "$work/$x.tar"
  python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))[0]["Layers"]))' \
    "$work/$x.layers/manifest.json" >"$work/$x.order"
done
cat "$work"/[abcd].tar "$work"/[abcd].layers/*/layer.tar >/dev/null # warm

median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# One seed of archive $1: prints "seconds peak_rss_kib".
seed() {
  local dst="$work/t/seed"
  rm -rf "$dst"; mkdir -p "$dst"
  /usr/bin/time -f '%e %M' -o "$work/time" "$bin" seed --source "$1" --target "$dst" \
    --allow-non-mountpoint --progress none -q >/dev/null
  cat "$work/time"
}
# Unpack the layers of archive $1 in order with `tar $2`: prints seconds.
untar() {
  local dst="$work/t/untar"
  rm -rf "$dst"; mkdir -p "$dst"
  local t0 t1
  t0=$(date +%s.%N)
  (cd "$work/$1.layers" && while read -r l; do tar -C "$dst" "$2" "$l"; done <"$work/$1.order")
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f\n", b - a}'
}
: >"$work/sa.txt"; : >"$work/ta.txt"; : >"$work/sb.txt"; : >"$work/tb.txt"; : >"$work/sc.txt"; : >"$work/tc.txt"; : >"$work/sd.txt"; : >"$work/td.txt"
for r in $(seq "$runs"); do
  seed "$work/a.tar" >>"$work/sa.txt"; untar a -xf >>"$work/ta.txt"
  seed "$work/b.tar" >>"$work/sb.txt"; untar b -xzf >>"$work/tb.txt"
  seed "$work/d.tar" >>"$work/sd.txt"; untar d -xzf >>"$work/td.txt"
  seed "$work/c.tar" >>"$work/sc.txt"; untar c -xf >>"$work/tc.txt"
  echo "round $r: A seed $(tail -1 "$work/sa.txt"), tar -xf $(tail -1 "$work/ta.txt"); B seed $(tail -1 "$work/sb.txt"), tar -xzf $(tail -1 "$work/tb.txt"); C seed $(tail -1 "$work/sc.txt"), tar -xf $(tail -1 "$work/tc.txt"); D seed $(tail -1 "$work/sd.txt"), tar -xzf $(tail -1 "$work/td.txt")" >&2
done
# A seeded again over itself (the lock-free no-op: names from the headers alone) against
# reading and hashing A (sha256sum: what a seed that read every layer had to do at least).
seed "$work/a.tar" >/dev/null
: >"$work/ra.txt"; : >"$work/ha.txt"
for r in $(seq "$runs"); do
  /usr/bin/time -f '%e' -o "$work/time" "$bin" seed --source "$work/a.tar" --target "$work/t/seed" \
    --allow-non-mountpoint --progress none -q >/dev/null
  cat "$work/time" >>"$work/ra.txt"
  /usr/bin/time -f '%e' -o "$work/time" sha256sum "$work/a.tar" >/dev/null
  cat "$work/time" >>"$work/ha.txt"
done
again=$(median <"$work/ra.txt"); hash=$(median <"$work/ha.txt")
qr=$(awk -v a="$again" -v b="$hash" 'BEGIN {printf "%.2f", a / b}')
echo "A again: seed $(paste -sd' ' "$work/ra.txt"), sha256sum $(paste -sd' ' "$work/ha.txt")" >&2
seed "$work/c.tar" >/dev/null
# The seed wrote what tar unpacked (the benchmark measures correct work).
# (nix-seed copies store paths only: not store/.links, which a one-layer image carries.)
diff <(cd "$work/t/untar/nix/store" && find . -mindepth 1 -path ./.links -prune -o -printf '%p %y %m %U %G %T@ %s %l\n' | sort) \
     <(cd "$work/t/seed/store" && find . -mindepth 1 -path ./.links -prune -o -printf '%p %y %m %U %G %T@ %s %l\n' | sort) >&2 \
  || { echo "archive bench: the seeded store differs from the unpacked one" >&2; exit 1; }
sa=$(cut -d' ' -f1 "$work/sa.txt" | median); ta=$(median <"$work/ta.txt")
sb=$(cut -d' ' -f1 "$work/sb.txt" | median); tb=$(median <"$work/tb.txt")
sc=$(cut -d' ' -f1 "$work/sc.txt" | median); tc=$(median <"$work/tc.txt")
sd=$(cut -d' ' -f1 "$work/sd.txt" | median); td=$(median <"$work/td.txt")
rd=$(cut -d' ' -f2 "$work/sd.txt" | sort -n | tail -1)
qd=$(awk -v a="$sd" -v b="$td" 'BEGIN {printf "%.2f", a / b}')
ra=$(cut -d' ' -f2 "$work/sa.txt" | sort -n | tail -1); rb=$(cut -d' ' -f2 "$work/sb.txt" | sort -n | tail -1)
rc=$(cut -d' ' -f2 "$work/sc.txt" | sort -n | tail -1)
qa=$(awk -v a="$sa" -v b="$ta" 'BEGIN {printf "%.2f", a / b}')
qb=$(awk -v a="$sb" -v b="$tb" 'BEGIN {printf "%.2f", a / b}')
qc=$(awk -v a="$sc" -v b="$tc" 'BEGIN {printf "%.2f", a / b}')

rss_row=""
if [[ ",$skip," != *,rss,* ]]; then
  rm -rf "$work/t/seed" "$work/t/untar" "$work/img" "$work"/[abcd].*
  "$ex/bench_store" "$work/big/nix" --paths 300 --files 10000 --bytes "$big" >&2
  python3 "$mkimage" "$work/big" "$work/big.tar" --format docker --layers one
  rm -rf "$work/big"
  big_mib=$(( $(stat -c %s "$work/big.tar") / 1024 / 1024 ))
  r=$(seed "$work/big.tar")
  rss_row="| $big_mib MiB docker-archive, one layer | $(echo "$r" | cut -d' ' -f1) s | **$(( $(echo "$r" | cut -d' ' -f2) / 1024 )) MiB** (target: under 100 MiB) |"
fi

section=$(cat <<EOF
## Seeding from an image archive

\`scripts/bench.sh --archive --runs $runs\` ($(date -u +%Y-%m-%d), $(nproc) CPUs, load
$(cut -d' ' -f1 /proc/loadavg)): one store of $n_paths store paths, $n_files files, $mib MiB, as a
docker-archive with one layer per store path (dockerTools' streamLayeredImage), into empty
directories on a tmpfs, the archive warm; medians of $runs rounds (seconds per round: seed A
$(cut -d' ' -f1 "$work/sa.txt" | paste -sd' '), tar -xf $(paste -sd' ' "$work/ta.txt"); seed B
$(cut -d' ' -f1 "$work/sb.txt" | paste -sd' '), tar -xzf $(paste -sd' ' "$work/tb.txt"); seed C
$(cut -d' ' -f1 "$work/sc.txt" | paste -sd' '), tar -xf $(paste -sd' ' "$work/tc.txt"); seed D
$(cut -d' ' -f1 "$work/sd.txt" | paste -sd' '), tar -xzf $(paste -sd' ' "$work/td.txt")). A and B's
tar is one \`tar\` process per layer (1 per store path), as unpacking them takes; C and D
are the same store in one layer, one \`tar\`: the bare cost of unpacking without that
overhead.

| archive | nix-seed seed (median) | tar of its layers (median) | ratio | peak RSS |
|---|---|---|---|---|
| A: uncompressed layers | $sa s | $ta s (\`tar -xf\`) | **$qa** (target: at most 1.5) | $((ra / 1024)) MiB |
| B: gzip layers | $sb s | $tb s (\`tar -xzf\`) | **$qb** (target: at most 1.5) | $((rb / 1024)) MiB |
| C: one uncompressed layer | $sc s | $tc s (\`tar -xf\`) | **$qc** | $((rc / 1024)) MiB |
| D: one gzip layer | $sd s | $td s (\`tar -xzf\`) | **$qd** | $((rd / 1024)) MiB |
| A again, over a target that has it | $again s | $hash s (\`sha256sum\` of A) | **$qr** | |

The seeded store was checked equal to the unpacked one (type, mode, owner, mtime, size,
symlink target of every entry). The seed also verifies every layer's digest, registers
the paths and seeds var/, which tar does not. "A again" is the lock-free "nothing to do":
the archive's headers only (seeking past the data) give its store path names, found
complete in the target; its baseline is reading and hashing the archive once, the least a
seed that read every byte would do.

| big image | seconds | peak RSS |
|---|---|---|
$rss_row
EOF
)
if [ -n "$into" ]; then
  python3 - "$into" "$section" <<'EOF'
import sys
path, section = sys.argv[1], sys.argv[2]
s = open(path).read()
b, e = "<!-- archive:begin -->", "<!-- archive:end -->"
block = f"{b}\n{section}\n{e}"
s = s[:s.index(b)] + block + s[s.index(e) + len(e):] if b in s else s.rstrip("\n") + "\n\n" + block + "\n"
open(path, "w").write(s)
EOF
fi
echo "$section"
