#!/usr/bin/env bash
# Lock operations that reach a GlusterFS brick per waiter per second, while N seeders
# wait for the seed lock another one holds (BENCHMARKS.md, "Lock waiters on a shared
# disk"). Needs root and a debug build (failpoints): the holder stops with the heartbeat
# running at NIX_SEED_FAILPOINT=locked=sleep600 (a busy, healthy holder: never taken over).
#
#   scripts/bench/adhoc/lock-waiters.sh [--bin PATH] [--waiters N] [--seconds S] [--warmup S]
#
# --bin defaults to this checkout's debug build (cargo build first). To compare with an
# older commit: git worktree add /tmp/base COMMIT; (cd /tmp/base && cargo build); then
# --bin /tmp/base/target/x86_64-unknown-linux-gnu/debug/nix-seed.
#
# Brings scripts/netfs.sh up if it is not (and then down at the end), creates its own
# volume nslockwait (one brick, GlusterFS defaults) so that no other user of the harness
# counts, FUSE-mounts it once, then, on an empty target: the holder, N waiters, --warmup seconds for them to
# reach their steady pace, `gluster volume profile nslockwait info clear`, --seconds
# seconds, `info cumulative`. Prints every fop the brick saw in the window, then the lock
# fops (LK, INODELK, FINODELK, ENTRYLK, FENTRYLK) and all fops per waiter per second.
# Removes the volume, the mount and every process it started (by PID) at the end.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=$HERE/target/x86_64-unknown-linux-gnu/debug/nix-seed
WAITERS=50
SECONDS_=30
WARMUP=10
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --waiters) WAITERS=$2; shift 2 ;;
    --seconds) SECONDS_=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    *) echo "usage: $0 [--bin PATH] [--waiters N] [--seconds S] [--warmup S]" >&2; exit 2 ;;
  esac
done
[ -x "$BIN" ] || { echo "lock-waiters: $BIN is missing (cargo build)" >&2; exit 1; }
NETFS=$HERE/scripts/netfs.sh
BASE=${NIX_SEED_NETFS_BASE:-/tmp/nix-seed-netfs}
VOL=nslockwait
BRICK=$BASE/bricks/lockwait
MP=$BASE/mnt/lockwait
WORK=$(mktemp -d /tmp/lock-waiters.XXXXXX)
gcli() { gluster --mode=script --glusterd-sock="$BASE/gluster/run/glusterd.socket" --log-file="$WORK/cli.log" "$@"; }

brought_up=
if ! "$NETFS" status >/dev/null 2>&1; then
  "$NETFS" up >/dev/null
  brought_up=1
fi

pids=()
client=
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  umount "$MP" 2>/dev/null || umount -l "$MP" 2>/dev/null
  [ -n "$client" ] && kill "$client" 2>/dev/null
  gcli volume profile "$VOL" stop >/dev/null 2>&1
  gcli volume stop "$VOL" >/dev/null 2>&1
  gcli volume delete "$VOL" >/dev/null 2>&1
  rm -rf "$BRICK" "$WORK"
  [ -n "$brought_up" ] && "$NETFS" down >/dev/null 2>&1
}
trap cleanup EXIT

# The volume and its mount.
gcli volume info "$VOL" >/dev/null 2>&1 && { gcli volume stop "$VOL" >/dev/null 2>&1 || true; gcli volume delete "$VOL" >/dev/null; }
rm -rf "$BRICK"; mkdir -p "$BRICK" "$MP"
gcli volume create "$VOL" "127.0.0.2:$BRICK" force >/dev/null
gcli volume start "$VOL" >/dev/null
for _ in $(seq 100); do gcli volume status "$VOL" --xml 2>/dev/null | grep '<status>1</status>' >/dev/null && break; sleep 0.1; done
glusterfs --volfile-server=127.0.0.2 --volfile-id="$VOL" -l "$WORK/client.log" -p "$WORK/client.pid" "$MP"
for _ in $(seq 100); do [ "$(stat -f -c %T "$MP" 2>/dev/null)" = fuseblk ] && break; sleep 0.1; done
client=$(cat "$WORK/client.pid")

# A small image; the target is empty: the holder takes the lock to seed it and stops
# there, every waiter finds the image missing and waits for the lock.
(cd "$HERE" && cargo run -q --example make_store -- "$WORK/src" --paths 20 >/dev/null 2>&1) \
  || { echo "lock-waiters: cargo run --example make_store failed" >&2; exit 1; }
T=$MP/target
mkdir -p "$T"

seed() { "$BIN" seed --source "$WORK/src" --target "$T" --allow-non-mountpoint --lock-timeout 10m "$@"; }
NIX_SEED_FAILPOINT=locked=sleep600 seed >"$WORK/holder.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do grep -q 'failpoint locked reached' "$WORK/holder.log" && break; sleep 0.1; done
grep -q 'failpoint locked reached' "$WORK/holder.log" || { cat "$WORK/holder.log" >&2; exit 1; }
gcli volume profile "$VOL" start >/dev/null
for i in $(seq "$WAITERS"); do
  seed >"$WORK/waiter-$i.log" 2>&1 &
  pids+=($!)
done
sleep "$WARMUP"
gcli volume profile "$VOL" info clear >/dev/null
sleep "$SECONDS_"
gcli volume profile "$VOL" info cumulative >"$WORK/profile.txt"
alive=0
for p in "${pids[@]:1}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
[ "$alive" = "$WAITERS" ] || { echo "lock-waiters: only $alive of $WAITERS waiters still wait" >&2; tail -3 "$WORK"/waiter-*.log >&2; exit 1; }

# Rows "%-latency Avg Min Max Calls Fop" of the (one) brick's cumulative block.
awk -v n="$WAITERS" -v s="$SECONDS_" -v bin="$BIN" '
  /Duration:/ && !dur { dur = $2 }
  NF >= 9 && $(NF-1) ~ /^[0-9]+$/ && $NF ~ /^[A-Z]+$/ { calls[$NF] += $(NF-1); all += $(NF-1) }
  END {
    printf "binary %s: %d waiters, window %s s (the brick measured %s s: used below)\n", bin, n, s, dur
    if (dur > 0) s = dur
    for (f in calls) printf "  %-10s %8d\n", f, calls[f]
    lock = calls["LK"] + calls["INODELK"] + calls["FINODELK"] + calls["ENTRYLK"] + calls["FENTRYLK"]
    printf "lock fops: %d = %.3f per waiter per second\n", lock, lock / n / s
    printf "all fops:  %d = %.3f per waiter per second\n", all, all / n / s
  }' "$WORK/profile.txt"
