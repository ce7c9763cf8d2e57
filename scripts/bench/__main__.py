"""The nix-seed benchmark (issue 5): nix-seed against cp -a, rsync, tar and nix copy.

Run it through scripts/bench.sh, which builds the release binary and the workload
generator first. Needs root (loop devices, mounts, drop_caches). Standard library only.

Every copy goes to a FRESH destination filesystem (a new ext4 on a loop device for each
run; for GlusterFS a new private GlusterFS instance whose brick is a new ext4), because
re-creating a 100k-file tree right after deleting one on the same ext4 makes the inode
allocator crawl. The source is its own ext4 on a loop device, created and filled once.
Times are medians of several runs; contenders run round-robin (the order rotates every
round) so that background load hits them alike, and every ratio is also computed within
one round. Resource use comes from wait4(): user+sys CPU of the whole process tree, and
the largest process's peak RSS.
"""

import argparse
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

from . import common
from .common import REPO, cleanup_all, log
from .fs import is_mounted, make_targets
from .run import Ctx, all_contenders, make_workloads, run_phases, save
from .report import checks, machine_meta, report, report_from


def parse_args():
    ap = argparse.ArgumentParser(prog="scripts/bench.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="~5 minutes: a smaller workload (300 paths, 20k files, 400 MiB), cp -a / rsync -aH / "
                         "rsync --ignore-existing / nix copy / nix-seed -j4 -j8, ext4 only unless --targets says "
                         "otherwise, no real store, scale run or strace")
    ap.add_argument("--out", help="report file (default: BENCHMARKS.md in the repository; with --quick, "
                                  "BENCHMARKS.quick.md in the work directory)")
    ap.add_argument("--targets", help="comma-separated: ext4,gluster (default: both for a full run, "
                                      "gluster only if scripts/netfs.sh works; ext4 with --quick)")
    ap.add_argument("--runs", type=int, help="rounds per table on ext4 (default 5; 3 with --quick)")
    ap.add_argument("--gluster-runs", type=int, default=3, help="rounds per table on GlusterFS (default 3)")
    ap.add_argument("--jobs", default=None, help="nix-seed --jobs values (default 1,4,8,16; --quick 4,8)")
    ap.add_argument("--paths", type=int, help="synthetic workload: store paths (default 1500)")
    ap.add_argument("--files", type=int, help="synthetic workload: files (default 100000)")
    ap.add_argument("--bytes", type=int, help="synthetic workload: bytes (default 2 GiB)")
    ap.add_argument("--scale-files", type=int, default=1_000_000, help="scale run: files (default 1,000,000)")
    ap.add_argument("--scale-paths", type=int, default=20_000, help="scale run: store paths (default 20,000)")
    ap.add_argument("--scale-runs", type=int, default=3, help="scale run: rounds (default 3)")
    ap.add_argument("--skip", default="", help="comma-separated phases to leave out: real,noop,strace,scale,copy")
    ap.add_argument("--gluster-cold", default="cp,rsync-aH,seed-j8",
                    help="contenders measured cold on GlusterFS, or 'all' (default cp,rsync-aH,seed-j8; every "
                         "contender is measured warm there: a GlusterFS copy is bound by the target's round trips, "
                         "and a cold source adds about the same time to every contender)")
    ap.add_argument("--gluster-jobs", default="4,8,16",
                    help="nix-seed --jobs values on GlusterFS (default 4,8,16: -j1 takes long there and is "
                         "measured on ext4)")
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "nix-seed-bench"))
    ap.add_argument("--report-from", metavar="RESULTS_JSON",
                    help="measure nothing: write the report (--out) from the raw data of an earlier run")
    ap.add_argument("--bin", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--gen", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--argv", default="", help=argparse.SUPPRESS)
    return ap.parse_args()


def plan(a):
    """The run the command line asks for: a Ctx with its settings, contenders and phases."""
    ctx = Ctx()
    ctx.work = Path(a.workdir).resolve()
    ctx.bin, ctx.gen = Path(a.bin).resolve(), Path(a.gen).resolve()
    ctx.results, ctx.strace, ctx.workloads, ctx.notes = [], {}, {}, []
    ctx.runs = a.runs or (3 if a.quick else 5)
    ctx.gl_runs = a.gluster_runs
    ctx.noop_runs = max(ctx.runs, 5)
    ctx.scale_runs = a.scale_runs
    ctx.scale_files, ctx.scale_paths = a.scale_files, a.scale_paths
    skip = set(filter(None, a.skip.split(",")))
    if a.quick:
        skip |= {"real", "strace", "scale"}
    jobs = [int(j) for j in (a.jobs or ("4,8" if a.quick else "1,4,8,16")).split(",")]
    if 8 not in jobs:
        jobs.append(8)
    ctx.contenders_all = all_contenders(jobs)
    ctx.have_nix = shutil.which("nix") is not None
    if not ctx.have_nix:
        ctx.contenders_all = [c for c in ctx.contenders_all if c.kind != "nixcopy"]
        ctx.notes.append("`nix` is not installed (Debian `nix-bin`): `nix copy` was not measured.")
    copy_cs = ctx.contenders_all
    if a.quick:
        copy_cs = [c for c in copy_cs if c.kind in ("cp", "rsync-aH", "rsync-ie", "nixcopy", "seed")]
    targets = (a.targets or ("ext4" if a.quick else "ext4,gluster")).split(",")
    ctx.gl_modes = ["cold", "warm"]
    gl_cold = None if a.gluster_cold == "all" else set(a.gluster_cold.split(","))
    if a.quick and not a.targets:
        ctx.notes.append("--quick: ext4 only.")
    ctx.skip, ctx.copy_cs, ctx.target_names, ctx.gl_cold = skip, copy_cs, targets, gl_cold
    return ctx


def prepare_workdir(ctx, a):
    """A fresh work directory (refused while another benchmark has mounts in it); returns
    where the report goes."""
    # Work directory (never on tmpfs: the loop images are sparse files of several GiB).
    if ctx.work.exists():
        for p in ["mnt/dst", "mnt/src", "mnt/nixsrc", "ovl", "gl", "mnt/scale-src"]:
            if is_mounted(ctx.work / p):
                sys.exit(f"bench: {ctx.work / p} is mounted (another benchmark running?)")
        shutil.rmtree(ctx.work, ignore_errors=True)
    (ctx.work / "mnt").mkdir(parents=True)
    ctx.logs = ctx.work / "logs"
    ctx.logs.mkdir()
    common.RSS_FILE = ctx.work / "maxrss"
    out_path = Path(a.out) if a.out else (ctx.work / "BENCHMARKS.quick.md" if a.quick else REPO / "BENCHMARKS.md")
    if not out_path.is_absolute():
        out_path = Path.cwd() / out_path
    return out_path


def main():
    a = parse_args()
    if a.report_from:
        return report_from(a)
    if os.geteuid() != 0:
        sys.exit("bench: must run as root (loop devices, mounts, drop_caches)")
    ctx = plan(a)
    out_path = prepare_workdir(ctx, a)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    t_start = time.time()
    ctx.meta = machine_meta(ctx, shlex.split(a.argv))
    log(f"machine: {ctx.meta['cores']} cores, {ctx.meta['ram']}, kernel {ctx.meta['kernel']}; "
        f"{ctx.meta['background']}")
    try:
        srcfs, synth, wls = make_workloads(ctx, a)
        tgts = make_targets(ctx)
        run_phases(ctx, a, tgts, synth, wls)
        srcfs.down()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        cleanup_all()
        for img in ctx.work.glob("*.img"):
            img.unlink()
        sys.exit(130)
    finally:
        cleanup_all()
    dur = time.time() - t_start
    ctx.meta["duration"] = f"{int(dur // 3600)} h {int(dur % 3600 // 60)} min" if dur >= 3600 else \
        f"{int(dur // 60)} min {int(dur % 60)} s"
    save(ctx)
    report(ctx, out_path)
    print()
    for what, s, v in checks(ctx):
        print(f"{v:5s} {what}: {s}")
    print(f"\nreport: {out_path}; raw data: {ctx.work / 'results.json'}; duration {ctx.meta['duration']}")


if __name__ == "__main__":
    main()
