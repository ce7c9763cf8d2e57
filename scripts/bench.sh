#!/usr/bin/env bash
# The nix-seed benchmark (issue 5): nix-seed against cp -a, rsync -aH, tar | tar,
# rsync -a --ignore-existing and nix copy, on a synthetic store shaped like a real one
# (tools/bench_store.rs), a store built by real Nix (scripts/make-real-store.sh) and a
# million-file store (peak RSS), into fresh local ext4 filesystems and a private GlusterFS
# (scripts/netfs.sh), cold and warm; then the no-op on a seeded target, and strace counts.
#
#   scripts/bench.sh [--quick] [--out FILE] [--targets ext4,gluster] [--runs N]
#                    [--jobs 1,4,8,16] [--paths N] [--files N] [--bytes N] [--scale-runs N]
#                    [--skip real,noop,strace,scale,copy] [--gluster-cold LIST|all]
#                    [--workdir DIR] [--no-build]
#
# Full run (default): writes BENCHMARKS.md in the repository; takes hours with GlusterFS
# (BENCHMARKS.md says how long the recorded run took). --quick: about 5 minutes, a
# smaller workload and fewer contenders, ext4 only, report in the work directory.
# `scripts/bench.sh --help` lists every option.
#
#   scripts/bench.sh --latency [--delays 500,1000,2000] [--runs N] [--jobs-sweep 8,16,32,64]
#                    [--paths N] [--files N] [--big-path N] [--into BENCHMARKS.md] ...
#
# --latency: nix-seed on a slow network disk instead (scripts/bench/latency.py): the
# delayed GlusterFS volume of scripts/netfs.sh; operations at the brick per file for
# `cp -a`, nix-seed and the no-op, then times at each delay; prints markdown tables
# (--into FILE: between FILE's latency markers). About 15 minutes with the defaults.
# `scripts/bench.sh --latency --help` lists its options.
#
#   scripts/bench.sh --dbless [--runs N] [--jobs N] [--paths N] [--files N] [--bytes N] [--into FILE]
#
# --dbless: an image without a Nix database against the same image with one seeded with
# --verify, the scanner's throughput and peak RSS (scripts/bench/dbless.sh; ~5 minutes).
#
#   scripts/bench.sh --gc [--paths N] [--runs N] [--gluster-runs N] [--big N] [--rss-runs N]
#                         [--skip gluster,rss] [--workdir DIR] [--no-build] [--into BENCHMARKS.md]
#
# --gc: issue 20's benchmark (scripts/bench/gc.py; about 15 minutes): `nix-seed gc` against
# `nix-store --gc` on copies of one store of 10,000 paths made by real Nix, half of them
# garbage (fails unless both delete the same paths); `gc` with nothing to delete on a
# GlusterFS volume of its own (round trips at the brick, time); peak RSS of `gc` and
# `gc --dry-run` at 100,000 registered paths. `scripts/bench.sh --gc --help` lists its options.
#
#   scripts/bench.sh --archive [--runs N] [--paths N] [--files N] [--bytes N] [--into FILE]
#
# --archive: seeding from an image archive against `tar -xf`/`tar -xzf` of its layers,
# and peak RSS for a 2 GiB image (scripts/bench/archive.sh; ~10 minutes).
#
# The benchmark itself is the Python package scripts/bench/ (run, fs, report; standard
# library only), run as `python3 -m bench` with PYTHONPATH=scripts.
#
# Needs root (loop devices, mounts, drop_caches), python3 (standard library only) and
# cargo; installs rsync, time, strace, sqlite3 and nix-bin with apt-get when missing. Scratch
# space: DIR (default $TMPDIR or /tmp, then nix-seed-bench), which must not be a tmpfs:
# sparse loop images of a few GiB (about 25 GiB for the scale run) live there. It mounts
# only in a private mount namespace; everything is unmounted and its loop devices detached
# at the end, also on Ctrl-C or SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."

# --dbless: issue 18's benchmark, images without a Nix database (scripts/bench/dbless.sh);
# --archive: issue 21's, seeding from an image archive (scripts/bench/archive.sh).
for a in "$@"; do
  if [ "$a" = --dbless ] || [ "$a" = --archive ]; then
    rest=()
    for b in "$@"; do [ "$b" = "$a" ] || rest+=("$b"); done
    exec bash "scripts/bench/${a#--}.sh" "${rest[@]}"
  fi
done

# --gc: issue 20's benchmark, nix-seed gc against nix-store --gc (scripts/bench/gc.py).
for a in "$@"; do
  if [ "$a" = --gc ]; then
    rest=() build=1
    for b in "$@"; do
      case "$b" in --gc) ;; --no-build) build=0 ;; *) rest+=("$b") ;; esac
    done
    case " ${rest[*]-} " in *" -h "*|*" --help "*) PYTHONPATH=scripts exec python3 -m bench.gc --bin /dev/null --help ;; esac
    [ "$(id -u)" = 0 ] || { echo "bench: must run as root (mount namespaces, GlusterFS)" >&2; exit 1; }
    need=()
    [ -x /usr/bin/time ] || need+=(time)
    command -v strace >/dev/null || need+=(strace)
    command -v nix-store >/dev/null || need+=(nix-bin)
    command -v sqlite3 >/dev/null || need+=(sqlite3)
    if [ ${#need[@]} -gt 0 ]; then
      echo "bench: installing ${need[*]}" >&2
      apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >&2
    fi
    [ "$build" = 0 ] || cargo build --release --bin nix-seed >&2
    bin="${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release/nix-seed"
    [ -x "$bin" ] || { echo "bench: $bin is missing (cargo build --release --bin nix-seed)" >&2; exit 1; }
    orig=""
    [ ${#rest[@]} -eq 0 ] || orig=$(printf '%q ' "${rest[@]}")
    PYTHONPATH=scripts exec python3 -m bench.gc --bin "$bin" "--argv=$orig" ${rest[@]+"${rest[@]}"}
  fi
done

build=1
args=()
mod=bench
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    --latency) mod=bench.latency ;;
    -h|--help) PYTHONPATH=scripts exec python3 -m "$mod" --bin /dev/null --gen /dev/null --help ;;
    *) args+=("$a") ;;
  esac
done

[ "$(id -u)" = 0 ] || { echo "bench: must run as root (loop devices, mounts, drop_caches)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench: python3 is required" >&2; exit 1; }

need=()
command -v rsync >/dev/null || need+=(rsync)
[ -x /usr/bin/time ] || need+=(time)
command -v strace >/dev/null || need+=(strace)
command -v nix >/dev/null || need+=(nix-bin)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v sqlite3 >/dev/null || need+=(sqlite3)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}" >&2
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >&2
fi

tdir="${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release"
if [ "$build" = 1 ]; then
  cargo build --release --bin nix-seed --example bench_store >&2
fi
for f in "$tdir/nix-seed" "$tdir/examples/bench_store"; do
  [ -x "$f" ] || { echo "bench: $f is missing (build with: cargo build --release --bin nix-seed --example bench_store)" >&2; exit 1; }
done

orig=""
[ ${#args[@]} -eq 0 ] || orig=$(printf '%q ' "${args[@]}")
if [ "$mod" = bench.latency ]; then
  # The delayed volume is a FUSE mount of this namespace: no private namespace here.
  PYTHONPATH=scripts exec python3 -m bench.latency --bin "$tdir/nix-seed" --gen "$tdir/examples/bench_store" \
    "--argv=$orig" ${args[@]+"${args[@]}"}
fi
# A private mount namespace: the benchmark's mounts are invisible to the rest of the
# machine, so a mount namespace another program creates meanwhile (the test suite's
# `unshare -m`) cannot copy them and keep their loop devices busy after we unmount.
PYTHONPATH=scripts exec unshare --mount --propagation private python3 -m bench --bin "$tdir/nix-seed" --gen "$tdir/examples/bench_store" \
  "--argv=$orig" ${args[@]+"${args[@]}"}
