#!/usr/bin/env bash
# Issue 18's benchmark: what registering an image without a Nix database costs.
#
#   scripts/bench.sh --dbless [--paths N] [--files N] [--bytes N] [--runs N] [--jobs N]
#                             [--workdir DIR] [--no-build] [--into BENCHMARKS.md]
#
# On one synthetic store (tools/bench_store.rs; default 1,200 store paths, 30,000 files,
# 600 MiB), two images of the same store paths: A carries its Nix database, B is the
# store alone (as dockerTools ships it). Each round seeds, into fresh empty targets on a
# tmpfs (so that no writeback of an earlier round lands in a later one), A with `--verify` (every copied path hashed against the
# database) and B (every path hashed and scanned for references), in alternating order,
# the source's page cache warm; medians of --runs rounds (default 5), the ratio B / A
# (target: at most 1.25), and the peak RSS of each (GNU time). Then the scanner alone
# (tools/scan_bench.rs on 1 thread: NAR hashing, hashing and scanning) against sha256sum
# over the same files, in MiB/s per core. Prints a markdown section; --into FILE puts it
# between FILE's `<!-- dbless:begin -->` and `<!-- dbless:end -->` markers.
set -euo pipefail
cd "$(dirname "$0")/../.."

paths=1200 files=30000 bytes=$((600 * 1024 * 1024)) runs=5 jobs=8 build=1 into=""
work="${TMPDIR:-/tmp}/nix-seed-bench-dbless"
while [ $# -gt 0 ]; do
  case "$1" in
    --paths) paths=$2; shift ;;
    --files) files=$2; shift ;;
    --bytes) bytes=$2; shift ;;
    --runs) runs=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    --workdir) work=$2; shift ;;
    --no-build) build=0 ;;
    --into) into=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "dbless bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command -v /usr/bin/time >/dev/null || { apt-get install -y -qq time >/dev/null; }
if [ "$build" = 1 ]; then
  cargo build --locked --release --quiet
  cargo build --locked --release --quiet --example bench_store --example scan_bench
fi
bin=target/x86_64-unknown-linux-gnu/release/nix-seed
ex=target/x86_64-unknown-linux-gnu/release/examples
[ -x "$ex/bench_store" ] || ex=target/release/examples

cleanup() { umount "$work/t" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cleanup
mkdir -p "$work/t"
mount -t tmpfs -o size=8g nix-seed-bench "$work/t"
"$ex/bench_store" "$work/a" --paths "$paths" --files "$files" --bytes "$bytes" >&2
mkdir -p "$work/b"
cp -a "$work/a/store" "$work/b/store"
n_paths=$(find "$work/a/store" -mindepth 1 -maxdepth 1 ! -name '.*' | wc -l)
mib=$(du -sm --apparent-size "$work/a/store" | cut -f1)

# One seed: prints "seconds peak_rss_kib".
seed() {
  local src=$1 dst=$2; shift 2
  rm -rf "$dst"; mkdir -p "$dst"; sync
  /usr/bin/time -f '%e %M' -o "$work/time" "$bin" seed --source "$src" --target "$dst" \
    --allow-non-mountpoint --jobs "$jobs" --progress none -q "$@" >/dev/null
  cat "$work/time"
}
median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

find "$work/a/store" "$work/b/store" -type f -print0 | xargs -0 cat >/dev/null # warm the sources
: >"$work/a.txt"; : >"$work/b.txt"
for r in $(seq "$runs"); do
  if [ $((r % 2)) = 1 ]; then
    seed "$work/a" "$work/t/a" --verify >>"$work/a.txt"; seed "$work/b" "$work/t/b" >>"$work/b.txt"
  else
    seed "$work/b" "$work/t/b" >>"$work/b.txt"; seed "$work/a" "$work/t/a" --verify >>"$work/a.txt"
  fi
  echo "round $r: A --verify $(tail -1 "$work/a.txt"), B computed $(tail -1 "$work/b.txt")" >&2
done
# What B registered equals what A's database says (the benchmark measures correct work).
python3 - "$work/t/a/var/nix/db/db.sqlite" "$work/t/b/var/nix/db/db.sqlite" <<'EOF'
import sqlite3, sys
def rows(db):
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    return {p: (h, n) for p, h, n in c.execute("SELECT path, hash, narSize FROM ValidPaths")}
a, b = rows(sys.argv[1]), rows(sys.argv[2])
assert a == b, f"B's registrations differ from A's database: {len(set(a.items()) ^ set(b.items()))} rows"
EOF
ta=$(cut -d' ' -f1 "$work/a.txt" | median); tb=$(cut -d' ' -f1 "$work/b.txt" | median)
ra=$(cut -d' ' -f2 "$work/a.txt" | sort -n | tail -1); rb=$(cut -d' ' -f2 "$work/b.txt" | sort -n | tail -1)
ratio=$(awk -v a="$ta" -v b="$tb" 'BEGIN {printf "%.2f", b / a}')

# The scanner alone, one thread, warm cache; sha256sum over the same files.
scan=$("$ex/scan_bench" "$work/b" --jobs 1)
t0=$(date +%s.%N)
find "$work/b/store" -type f -print0 | xargs -0 cat | sha256sum >/dev/null
t1=$(date +%s.%N)
sha=$(awk -v m="$mib" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", m / (b - a)}')

section=$(cat <<EOF
## Images without a Nix database

\`scripts/bench.sh --dbless --runs $runs --jobs $jobs\` ($(date -u +%Y-%m-%d), $(nproc) CPUs, load
$(cut -d' ' -f1 /proc/loadavg)): one store of $n_paths store paths, $files files, $mib MiB, seeded
into empty targets on a tmpfs, the source warm on $(stat -f -c %T "$work"),
medians of $runs rounds in alternating order (seconds per round: A $(cut -d' ' -f1 "$work/a.txt" | paste -sd' '),
B $(cut -d' ' -f1 "$work/b.txt" | paste -sd' ')).

| image | what is hashed | seconds (median) | peak RSS |
|---|---|---|---|
| A: with its database, \`--verify\` | every copied path, against the database | $ta | $((ra / 1024)) MiB |
| B: no database (dockerTools-like) | every path, hashed and scanned for references | $tb | $((rb / 1024)) MiB |
| ratio B / A | | **$ratio** (target: at most 1.25) | |

B's registrations were checked equal to A's database (hash and NAR size of every path).

The scanner alone, one thread, warm cache (\`tools/scan_bench.rs\` on B's store; sha256sum over
the same files with \`find | xargs cat | sha256sum\`): sha256sum **$sha MiB/s**;
\`\`\`
$scan
\`\`\`
EOF
)
if [ -n "$into" ]; then
  python3 - "$into" "$section" <<'EOF'
import sys
path, section = sys.argv[1], sys.argv[2]
s = open(path).read()
b, e = "<!-- dbless:begin -->", "<!-- dbless:end -->"
block = f"{b}\n{section}\n{e}"
s = s[:s.index(b)] + block + s[s.index(e) + len(e):] if b in s else s.rstrip("\n") + "\n\n" + block + "\n"
open(path, "w").write(s)
EOF
fi
echo "$section"
