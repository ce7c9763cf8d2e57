#!/bin/bash
# Ad-hoc measurement kept as it was run for BENCHMARKS.md; OLD is a release build of an
# earlier commit in a worktree at /tmp/before (git worktree add /tmp/before REV; cargo build
# --release there), NEW this checkout's release build (ROUNDS rounds, default 3). Needs root.
# local no-loss check: cp -a vs nix-seed before and after, tmpfs and ext4 (loop), warm source, rounds rotating
set -e
here=$(cd "$(dirname "$0")/../../.." && pwd)
NEW=${NEW:-$here/target/x86_64-unknown-linux-gnu/release/nix-seed}
OLD=${OLD:-/tmp/before/target/x86_64-unknown-linux-gnu/release/nix-seed}
GEN=${GEN:-$here/target/x86_64-unknown-linux-gnu/release/examples/bench_store}
ROUNDS=${ROUNDS:-3}
SRC=/tmp/local-src/nix
[ -d $SRC/store ] || $GEN $SRC --paths 300 --files 30000 --bytes 314572800 >/dev/null 2>&1
mkdir -p /mnt/lt; 
tar cf - $SRC >/dev/null 2>&1  # warm
for fs in tmpfs ext4; do
  declare -A T=()
  for r in $(seq "$ROUNDS"); do
    for c in cp old new; do
      if [ $fs = tmpfs ]; then mount -t tmpfs -o size=2g none /mnt/lt; else truncate -s 2G /tmp/lt.img; mkfs.ext4 -q -F /tmp/lt.img; mount -o loop /tmp/lt.img /mnt/lt; fi
      sync
      s=$(date +%s%N)
      case $c in
        cp) cp -a $SRC/store /mnt/lt/ ;;
        old) $OLD seed --source $SRC --target /mnt/lt -q >/dev/null ;;
        new) $NEW seed --source $SRC --target /mnt/lt -q >/dev/null ;;
      esac
      sync
      e=$(date +%s%N)
      T[$c]+="$(( (e-s)/1000000 )) "
      umount /mnt/lt
    done
  done
  for c in cp old new; do echo "$fs $c ms: ${T[$c]} median $(echo ${T[$c]} | tr ' ' '\n' | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p")"; done
done
rm -f /tmp/lt.img
