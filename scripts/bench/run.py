"""Running the benchmark: workloads, contenders (nix-seed, cp -a, rsync, tar, nix copy) and
the phases (copy, no-op, strace, scale); results saved as JSON."""

import json
import os
import re
import shutil
import time
from pathlib import Path

from .common import GIB, MIB, REPO, log, measure, out, tail
from .fs import Ext4Target, LoopFS, drop_caches, overlay_down, overlay_up, store_stats, warm_read


class Workload:
    def __init__(self, key, title, root):
        self.key, self.title, self.root = key, title, Path(root)  # root/nix = the Nix root
        self.stats = None
        self.gen_cmd = self.gen_line = None

    @property
    def nix(self):
        return self.root / "nix"


NIX_CONFIG = "substituters =\nbuild-users-group =\nexperimental-features = nix-command\n"


class Contender:
    def __init__(self, key, label, kind, jobs=None):
        self.key, self.label, self.kind, self.jobs = key, label, kind, jobs

    @property
    def is_seed(self):
        return self.kind == "seed"

    def argv(self, ctx, src_nix, dst):
        k = self.kind
        if k == "cp":
            return ["cp", "-a", f"{src_nix}/.", f"{dst}/"]
        if k == "rsync-aH":
            return ["rsync", "-aH", f"{src_nix}/", f"{dst}/"]
        if k == "tar":
            return ["bash", "-c", 'tar -C "$1" -cf - . | tar -C "$2" -xf -', "tar", src_nix, dst]
        if k == "rsync-ie":
            return ["rsync", "-a", "--ignore-existing", f"{src_nix}/", f"{dst}/"]
        if k == "nixcopy":
            return [
                "nix", "--extra-experimental-features", "nix-command", "copy",
                "--store", f"local?root={ctx.overlay_root}", "--to", f"local?root={dst}",
                "--all", "--no-check-sigs",
            ]
        if k == "seed":
            return [
                ctx.bin, "seed", "--source", src_nix, "--target", dst, "--allow-non-mountpoint",
                "--progress", "none", "-q", "--jobs", str(self.jobs),
            ]
        raise ValueError(k)

    def env(self):
        e = dict(os.environ)
        if self.kind == "nixcopy":
            e["NIX_CONFIG"] = NIX_CONFIG
            e.pop("NIX_REMOTE", None)
        return e

    def store_dir(self, dst):
        return Path(dst) / "nix" / "store" if self.kind == "nixcopy" else Path(dst) / "store"


def all_contenders(jobs):
    cs = [
        Contender("cp", "`cp -a`", "cp"),
        Contender("rsync-aH", "`rsync -aH`", "rsync-aH"),
        Contender("tar", "`tar \\| tar`", "tar"),
        Contender("rsync-ie", "`rsync -a --ignore-existing`", "rsync-ie"),
        Contender("nixcopy", "`nix copy`", "nixcopy"),
    ]
    for j in jobs:
        cs.append(Contender(f"seed-j{j}", f"nix-seed -j{j}", "seed", j))
    return cs


class Ctx:
    pass


def check_tree(c, dst, wl):
    """Cheap sanity check after a run: every store path name arrived."""
    sd = c.store_dir(dst)
    try:
        got = {n for n in os.listdir(sd) if not n.startswith(".")}
    except OSError as e:
        return f"no store in the target: {e}"
    missing = set(wl.stats["names"]) - got
    if missing:
        return f"{len(missing)} store paths missing in {sd}"
    return None


def one_run(ctx, target, wl, c, mode, rnd, phase, small=False):
    dst = target.fresh(small=small)
    if c.kind == "nixcopy":
        overlay_up(ctx, wl)
    try:
        if mode == "cold":
            drop_caches()
        else:
            warm_read(wl.nix)
        logp = ctx.logs / f"{phase}-{target.name}-{wl.key}-{mode}-{c.key}-{rnd}.log"
        r = measure(c.argv(ctx, wl.nix, dst), env=c.env(), log_path=logp)
        problem = None
        if r["rc"] != 0:
            problem = f"exit {r['rc']}: " + tail(logp, 5)
        else:
            problem = check_tree(c, dst, wl)
        r.update(phase=phase, target=target.name, workload=wl.key, mode=mode, contender=c.key, round=rnd,
                 problem=problem)
        status = "FAILED " + problem.splitlines()[0] if problem else ""
        log(f"  {target.name} {wl.key} {mode:4s} r{rnd} {c.key:9s} wall {r['wall']:8.3f}s cpu {r['cpu']:7.2f}s "
            f"rss {r['maxrss_kib'] / 1024:6.1f} MiB load {r['load1']:.1f} bg-cpu {r['bg_cpu']:.1f}s {status}")
        ctx.results.append(r)
        save(ctx)
        return r
    finally:
        if c.kind == "nixcopy":
            overlay_down(ctx)
        if not small:
            target.release()


def copy_phase(ctx, target, wl, contenders, modes, runs, small=False):
    log(f"== {target.name}: {wl.key} ({wl.title}), {', '.join(modes)}, {runs} rounds, "
        f"{', '.join(c.key for c in contenders)}")
    for rnd in range(1, runs + 1):
        for mode in modes:
            k = (rnd - 1) % len(contenders)
            order = contenders[k:] + contenders[:k]
            for c in order:
                one_run(ctx, target, wl, c, mode, rnd, "copy", small=small)
    if small:
        target.release()


def noop_phase(ctx, target, wl, runs, modes):
    """On a target nix-seed seeded fully (DST/nix, so that `nix copy --to local?root=DST`
    sees the same store): nix-seed's no-op against rsync --ignore-existing and nix copy."""
    log(f"== {target.name}: no-op on a seeded target ({wl.key})")
    dst = target.fresh()
    nixdst = dst / "nix"
    nixdst.mkdir()
    seed = Contender("seed-j8", "nix-seed", "seed", 8)
    rsync = Contender("rsync-ie", "`rsync -a --ignore-existing`", "rsync-ie")
    nixcopy = Contender("nixcopy", "`nix copy`", "nixcopy")
    overlay_up(ctx, wl)
    try:
        r = measure(seed.argv(ctx, wl.nix, nixdst), log_path=ctx.logs / f"noop-{target.name}-initial-seed.log")
        if r["rc"] != 0:
            raise RuntimeError("initial seed failed: " + tail(ctx.logs / f"noop-{target.name}-initial-seed.log"))
        log(f"  seeded {nixdst} in {r['wall']:.1f}s")
        cs = [(seed, nixdst), (rsync, nixdst), (nixcopy, dst)]
        if not ctx.have_nix:
            cs = cs[:2]
        # One untimed run each: rsync adds what nix-seed leaves out (store/.links, var/'s
        # lock files), nix copy opens (and converts) the database; after that all are no-ops.
        for c, d in cs:
            measure(c.argv(ctx, wl.nix, d), env=c.env(), log_path=ctx.logs / f"noop-{target.name}-warmup-{c.key}.log")
        for rnd in range(1, runs + 1):
            for mode in modes:
                k = (rnd - 1) % len(cs)
                for c, d in cs[k:] + cs[:k]:
                    if mode == "cold":
                        drop_caches()
                    else:
                        # Warm: the same command once, untimed, right before (what it reads
                        # is then cached, whatever ran before it).
                        measure(c.argv(ctx, wl.nix, d), env=c.env(),
                                log_path=ctx.logs / f"noop-{target.name}-prewarm-{c.key}.log")
                    logp = ctx.logs / f"noop-{target.name}-{mode}-{c.key}-{rnd}.log"
                    r = measure(c.argv(ctx, wl.nix, d), env=c.env(), log_path=logp)
                    problem = None if r["rc"] == 0 else f"exit {r['rc']}: " + tail(logp, 5)
                    r.update(phase="noop", target=target.name, workload=wl.key, mode=mode, contender=c.key,
                             round=rnd, problem=problem)
                    log(f"  noop {target.name} {mode:4s} r{rnd} {c.key:9s} wall {r['wall'] * 1000:9.1f} ms "
                        f"cpu {r['cpu']:6.2f}s rss {r['maxrss_kib'] / 1024:5.1f} MiB"
                        + (f" FAILED {problem.splitlines()[0]}" if problem else ""))
                    ctx.results.append(r)
                    save(ctx)
    finally:
        overlay_down(ctx)
        target.release()


def strace_phase(ctx, wl):
    """strace -c -f of one seed (and one cp -a) of the workload, warm source, fresh ext4."""
    if not shutil.which("strace"):
        log("strace not installed: skipping syscall counts")
        return
    target = Ext4Target(ctx, ctx.dst_size)
    for c in [Contender("seed-j8", "nix-seed -j8", "seed", 8), Contender("cp", "`cp -a`", "cp")]:
        dst = target.fresh()
        try:
            warm_read(wl.nix)
            f = ctx.logs / f"strace-{c.key}.txt"
            r = measure(["strace", "-c", "-f", "-o", f] + c.argv(ctx, wl.nix, dst),
                        log_path=ctx.logs / f"strace-{c.key}.log")
            if r["rc"] != 0:
                log(f"strace of {c.key} failed: {tail(ctx.logs / f'strace-{c.key}.log', 5)}")
                continue
            calls = {}
            for line in f.read_text().splitlines():
                m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$", line)
                if m and m.group(3) != "total":
                    calls[m.group(3)] = int(m.group(1))
            ctx.strace[c.key] = {"calls": calls, "wall": r["wall"], "raw": f.read_text()}
            log(f"  strace {c.key}: {sum(calls.values())} syscalls for {wl.stats['files']} files")
        finally:
            target.release()
    save(ctx)


def scale_phase(ctx, runs):
    """~1M small files: peak RSS (and time) of nix-seed against cp -a."""
    files, paths = ctx.scale_files, ctx.scale_paths
    log(f"== scale: {paths} store paths x {files // paths} files (small)")
    srcfs = LoopFS(ctx.work / "scale-src.img", ctx.work / "mnt" / "scale-src", 24 * GIB, inodes=files * 2)
    srcfs.up()
    try:
        wl = Workload("scale", f"scale: {files:,} small files", srcfs.mnt)
        t = time.monotonic()
        g = out([ctx.gen, wl.nix, "--paths", paths, "--files", files, "--small-files", "--seed", "7"])
        log(f"  generated in {time.monotonic() - t:.0f}s: {g.strip()}")
        wl.gen_cmd = (f"cargo run --release --example bench_store -- DIR --paths {paths} --files {files} "
                      f"--small-files --seed 7")
        wl.gen_line = g.strip().split(": ", 1)[-1]
        wl.stats = store_stats(wl.nix)
        ctx.workloads["scale"] = wl
        target = Ext4Target(ctx, 24 * GIB, inodes=files * 2)
        cs = [Contender("cp", "`cp -a`", "cp"), Contender("seed-j8", "nix-seed -j8", "seed", 8)]
        copy_phase(ctx, target, wl, cs, ["warm"], runs)
    finally:
        srcfs.down()


def save(ctx):
    data = {
        "results": ctx.results,
        "strace": ctx.strace,
        "workloads": {k: {kk: vv for kk, vv in w.stats.items() if kk != "names"}
                      | {"title": w.title, "gen_cmd": w.gen_cmd, "gen_line": w.gen_line}
                      for k, w in ctx.workloads.items() if w.stats},
        "meta": ctx.meta,
        "config": {"runs": ctx.runs, "gl_runs": getattr(ctx, "gl_runs", ctx.runs), "noop_runs": ctx.noop_runs,
                   "scale_runs": ctx.scale_runs,
                   "notes": ctx.notes, "targets": getattr(ctx, "targets", []),
                   "jobs": sorted({c.jobs for c in ctx.contenders_all if c.is_seed}),
                   "have_nix": ctx.have_nix},
    }
    (ctx.work / "results.json").write_text(json.dumps(data, indent=1))


def make_workloads(ctx, a):
    """The source filesystem (a fresh ext4) with the synthetic store and, unless skipped,
    the store real Nix builds. Returns the source filesystem and the workloads."""
    skip = ctx.skip
    # Source: a fresh ext4 holding every workload.
    paths = a.paths or (300 if a.quick else 1500)
    files = a.files or (20_000 if a.quick else 100_000)
    nbytes = a.bytes or ((400 * MIB) if a.quick else 2 * GIB)
    src_size = max(8 * GIB, int(nbytes * 2.5) + files * 16 * 1024)
    ctx.dst_size = src_size
    srcfs = LoopFS(ctx.work / "src.img", ctx.work / "mnt" / "src", src_size)
    srcfs.up()
    synth = Workload("synth", f"synthetic ({paths:,} paths, {files:,} files, {nbytes / GIB:.2f} GiB)",
                     srcfs.mnt / "synth")
    synth.gen_cmd = (f"cargo run --release --example bench_store -- DIR --paths {paths} --files {files} "
                     f"--bytes {nbytes}")
    t = time.monotonic()
    synth.gen_line = out([ctx.gen, synth.nix, "--paths", paths, "--files", files, "--bytes", nbytes]).strip()
    synth.gen_line = synth.gen_line.split(": ", 1)[-1]
    log(f"synthetic store generated in {time.monotonic() - t:.0f}s: {synth.gen_line}")
    synth.stats = store_stats(synth.nix)
    ctx.workloads["synth"] = synth
    wls = [synth]
    if "real" not in skip:
        real = Workload("real", "real store built by Nix (`scripts/make-real-store.sh ROOT v1`)",
                        srcfs.mnt / "real")
        real.gen_cmd, real.gen_line = "scripts/make-real-store.sh ROOT v1", None
        try:
            t = time.monotonic()
            g = out([REPO / "scripts" / "make-real-store.sh", real.root, "v1"], timeout=1800)
            real.gen_line = "; ".join(l for l in g.splitlines() if l.startswith(("valid paths", "store/.links")))
            real.stats = store_stats(real.nix)
            ctx.workloads["real"] = real
            wls.append(real)
            log(f"real store built in {time.monotonic() - t:.0f}s: {real.stats['paths']} paths, "
                f"{real.stats['files']} files")
        except Exception as e:
            ctx.notes.append(f"The real store (`scripts/make-real-store.sh`) could not be built: "
                             f"{str(e).splitlines()[0]}; workload (b) was skipped.")
            log(f"real store failed: {e}")
    os.sync()
    return srcfs, synth, wls


def run_phases(ctx, a, tgts, synth, wls):
    """Copy, no-op, strace and scale phases, target by target."""
    skip, copy_cs, gl_cold = ctx.skip, ctx.copy_cs, ctx.gl_cold
    modes = ["cold", "warm"]
    for name in ctx.targets:
        tg = tgts[name]
        for wl in (wls if "copy" not in skip else []):
            if name == "ext4":
                copy_phase(ctx, tg, wl, copy_cs, modes, ctx.runs, small=(wl.key == "real"))
            elif a.quick:
                cs = [c for c in copy_cs if c.key in ("cp", "seed-j8")]
                copy_phase(ctx, tg, wl, cs, ["warm"], ctx.gl_runs, small=(wl.key == "real"))
            else:
                gj = {f"seed-j{j}" for j in a.gluster_jobs.split(",")} | {"seed-j8"}
                cs = [c for c in copy_cs if not c.is_seed or c.key in gj]
                copy_phase(ctx, tg, wl, cs, ["warm"], ctx.gl_runs, small=(wl.key == "real"))
                cold = [c for c in cs if gl_cold is None or c.key in gl_cold]
                copy_phase(ctx, tg, wl, cold, ["cold"], ctx.gl_runs, small=(wl.key == "real"))
        if "noop" not in skip:
            noop_phase(ctx, tg, synth, ctx.noop_runs if name == "ext4" else max(ctx.gl_runs, 5), modes)
        if name == "ext4" and "strace" not in skip:
            strace_phase(ctx, synth)
    if "scale" not in skip and "ext4" in ctx.target_names:
        scale_phase(ctx, a.scale_runs)
