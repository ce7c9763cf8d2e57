#!/bin/bash
# Ad-hoc measurement kept as it was run for BENCHMARKS.md ("On a slow network disk"); OLD is a
# release build of cb85bf9 in a worktree at /tmp/before (git worktree add /tmp/before cb85bf9;
# cargo build --release there), NEW this checkout's release build. Needs root.
# no-op cost on the delayed GlusterFS volume (1 ms/op): before (cb85bf9) vs after (main), and after with the hourly last-seen write
set -e
A=$(bash /work/main/scripts/netfs.sh status 2>/dev/null | sed -n "s/^GLUSTER_DELAY_A=//p")

NEW=/work/main/target/x86_64-unknown-linux-gnu/release/nix-seed
OLD=/tmp/before/target/x86_64-unknown-linux-gnu/release/nix-seed
SRC=/tmp/noop-src
[ -d $SRC/nix ] || (cd /work/main && cargo run -q --release --example make_store -- $SRC/nix --paths 300 >/dev/null 2>&1 || cargo run -q --example make_store -- $SRC/nix >/dev/null)
for v in old new; do
  bin=$OLD; [ $v = new ] && bin=$NEW
  T=$A/noop-$v-$$; mkdir -p $T
  $bin seed --source $SRC/nix --target $T --allow-non-mountpoint -q >/dev/null 2>&1 || { echo "seed failed $v"; $bin seed --source $SRC/nix --target $T --allow-non-mountpoint 2>&1 | tail -3; exit 1; }
  ts=()
  for i in 1 2 3 4 5 6 7; do
    s=$(date +%s%N); $bin seed --source $SRC/nix --target $T --allow-non-mountpoint -q >/dev/null; e=$(date +%s%N)
    ts+=($(( (e-s)/1000 )))
  done
  echo "$v no-op us: ${ts[*]} median $(printf '%s\n' "${ts[@]}" | sort -n | sed -n 4p)"
  if [ $v = new ]; then
    ts=()
    for i in 1 2 3 4 5 6 7; do
      for m in $T/.nix-seed/images/*; do touch -m -d '2 hours ago' $m; done
      sync
      s=$(date +%s%N); $bin seed --source $SRC/nix --target $T --allow-non-mountpoint -q >/dev/null; e=$(date +%s%N)
      ts+=($(( (e-s)/1000 )))
    done
    echo "new no-op with the hourly last-seen write us: ${ts[*]} median $(printf '%s\n' "${ts[@]}" | sort -n | sed -n 4p)"
    m=$(ls $T/.nix-seed/images/* | head -1); stat -c 'marker mtime now: %y' $m
    for m in $T/.nix-seed/images/*; do touch -m -d '2 hours ago' $m; done
    strace -f -c -o /tmp/noop-strace-bump.txt $bin seed --source $SRC/nix --target $T --allow-non-mountpoint -q >/dev/null
    strace -f -c -o /tmp/noop-strace.txt $bin seed --source $SRC/nix --target $T --allow-non-mountpoint -q >/dev/null
    echo "syscalls no-op: $(tail -1 /tmp/noop-strace.txt)"; echo "syscalls no-op with bump: $(tail -1 /tmp/noop-strace-bump.txt)"
  else
    strace -f -c -o /tmp/noop-strace-old.txt $bin seed --source $SRC/nix --target $T --allow-non-mountpoint -q >/dev/null
    echo "syscalls old no-op: $(tail -1 /tmp/noop-strace-old.txt)"
  fi
done
