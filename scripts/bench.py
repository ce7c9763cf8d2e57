#!/usr/bin/env python3
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
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import stat as S
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
T_START = time.monotonic()
MIB = 1 << 20
GIB = 1 << 30


def log(msg):
    t = time.monotonic() - T_START
    print(f"[bench {int(t // 60):3d}m{t % 60:04.1f}s] {msg}", file=sys.stderr, flush=True)


def run(argv, check=True, capture=False, env=None, timeout=None, quiet=False):
    """Run a helper command (not measured)."""
    r = subprocess.run(
        [str(a) for a in argv],
        stdout=subprocess.PIPE if capture else (subprocess.DEVNULL if quiet else None),
        stderr=subprocess.PIPE if (capture or quiet) else None,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and r.returncode != 0:
        err = (r.stderr or b"").decode(errors="replace")[-2000:] if (capture or quiet) else ""
        raise RuntimeError(f"command failed ({r.returncode}): {shlex.join(str(a) for a in argv)}\n{err}")
    return r


def out(argv, **kw):
    return run(argv, capture=True, **kw).stdout.decode(errors="replace")


# ---------------------------------------------------------------------------------------
# Mounts and loop devices we created, undone in reverse order on exit.

CLEANUP = []  # (description, callable)
CHILD = None  # the command being measured (its own session), killed first on interrupt


def cleanup_all():
    global CHILD
    if CHILD is not None and CHILD.poll() is None:
        try:
            os.killpg(CHILD.pid, signal.SIGKILL)
            CHILD.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
    CHILD = None
    while CLEANUP:
        desc, fn = CLEANUP.pop()
        try:
            fn()
        except Exception as e:  # keep going: unmount everything we can
            log(f"cleanup: {desc}: {e}")


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == path:
                return True
    return False


def umount(path):
    for _ in range(20):
        if not is_mounted(path):
            return
        r = run(["umount", path], check=False, quiet=True)
        if r.returncode != 0:
            time.sleep(0.5)
    if is_mounted(path):
        run(["umount", "-l", path], check=False, quiet=True)


class LoopFS:
    """A fresh ext4 on a sparse image file behind a loop device (direct I/O, so the
    backing file is not cached a second time by the host filesystem)."""

    def __init__(self, img, mnt, size, inodes=None):
        self.img, self.mnt, self.size, self.inodes = Path(img), Path(mnt), size, inodes
        self.dev = None

    def up(self):
        self.down()
        self.mnt.mkdir(parents=True, exist_ok=True)
        with open(self.img, "wb") as f:
            f.truncate(self.size)
        mk = ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]
        if self.inodes:
            mk += ["-N", str(self.inodes)]
        run(mk + [self.img], quiet=True)
        for attempt in range(5):
            r = run(["losetup", "--find", "--show", "--direct-io=on", self.img], check=False, capture=True)
            if r.returncode == 0:
                self.dev = r.stdout.decode().strip()
                break
            time.sleep(0.2 * (attempt + 1))
        else:
            raise RuntimeError(f"losetup {self.img} failed")
        CLEANUP.append((f"detach {self.dev}", self._detach))
        run(["mount", self.dev, self.mnt], quiet=True)
        CLEANUP.append((f"umount {self.mnt}", lambda: umount(self.mnt)))
        return self.mnt

    def _detach(self):
        if self.dev:
            # Only our device, and only if it still points at our image.
            back = out(["losetup", "-n", "-O", "BACK-FILE", self.dev], check=False).strip()
            if back and os.path.realpath(back.split(" (")[0]) == os.path.realpath(self.img):
                run(["losetup", "-d", self.dev], check=False, quiet=True)
            self.dev = None

    def down(self, remove=True):
        umount(self.mnt)
        self._detach()
        if remove and self.img.exists():
            self.img.unlink()


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def warm_read(path):
    """Read every file and stat every entry below `path` (a previous read of the source)."""
    run(["bash", "-c", 'tar -C "$1" -cf - . | cat > /dev/null', "warm", path], quiet=True)


# ---------------------------------------------------------------------------------------
# Measuring one command


def cpu_busy_seconds():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


RSS_FILE = None


def measure(argv, env=None, log_path=None, timeout=3 * 3600):
    """Run argv; wall seconds, user+sys CPU of the whole tree (wait4 rusage of the child
    includes every descendant it waited for), peak RSS of its largest process, and the CPU
    other processes on the machine used meanwhile.

    The command runs under GNU time, which reports its child's ru_maxrss: a process forked
    straight from this Python would count Python's own RSS (Linux keeps the pre-exec high
    water mark in ru_maxrss), GNU time's is about 2 MiB."""
    busy0 = cpu_busy_seconds()
    load1 = os.getloadavg()[0]
    f = open(log_path, "wb") if log_path else open(os.devnull, "wb")
    rss_file = RSS_FILE
    try:
        os.unlink(rss_file)
    except OSError:
        pass
    global CHILD
    timer = None
    try:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] + [str(a) for a in argv],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        CHILD = p

        def kill():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        CHILD = None
    finally:
        if timer:
            timer.cancel()
        f.close()
    cpu = ru.ru_utime + ru.ru_stime
    busy = cpu_busy_seconds() - busy0
    try:
        maxrss = int(Path(rss_file).read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        maxrss = ru.ru_maxrss
    return {
        "wall": wall,
        "user": ru.ru_utime,
        "sys": ru.ru_stime,
        "cpu": cpu,
        "maxrss_kib": maxrss,
        "rc": p.returncode,
        "load1": load1,
        "bg_cpu": max(0.0, busy - cpu),
    }


def tail(path, n=15):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------
# Workloads


def store_stats(nixroot):
    """Counts of a Nix root's store (store paths, non-directory entries, distinct bytes...)."""
    store = Path(nixroot) / "store"
    names = sorted(n for n in os.listdir(store) if not n.startswith("."))
    st = {"paths": len(names), "files": 0, "regular": 0, "symlinks": 0, "hardlinks": 0, "dirs": 0, "bytes": 0}
    seen = set()

    def visit(path):
        s = os.lstat(path)
        if S.S_ISDIR(s.st_mode):
            st["dirs"] += 1
            with os.scandir(path) as it:
                for e in it:
                    visit(e.path)
        elif S.S_ISLNK(s.st_mode):
            st["files"] += 1
            st["symlinks"] += 1
        else:
            st["files"] += 1
            key = (s.st_dev, s.st_ino)
            if key in seen:
                st["hardlinks"] += 1
            else:
                seen.add(key)
                st["regular"] += 1
                st["bytes"] += s.st_size

    sys.setrecursionlimit(10000)
    for n in names:
        visit(str(store / n))
    st["names"] = names
    return st


class Workload:
    def __init__(self, key, title, root):
        self.key, self.title, self.root = key, title, Path(root)  # root/nix = the Nix root
        self.stats = None
        self.gen_cmd = self.gen_line = None

    @property
    def nix(self):
        return self.root / "nix"


# ---------------------------------------------------------------------------------------
# Contenders: argv for a source Nix root SRC (holding store/ and var/) and a target D.
# `nix copy` works on chroot stores ROOT/nix/{store,var}: it reads the source through an
# overlay (its writes to the source's var/ go to a tmpfs) and writes DST/nix/store.

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


# ---------------------------------------------------------------------------------------
# Targets: a fresh destination for every run.


class Ext4Target:
    name = "ext4"

    def __init__(self, ctx, size, inodes=None):
        self.ctx = ctx
        self.fs = LoopFS(ctx.work / "dst.img", ctx.work / "mnt" / "dst", size, inodes)

    def fresh(self, small=False):
        return self.fs.up()

    def release(self):
        self.fs.down()

    def describe(self):
        return "a new ext4 (mkfs.ext4, default options) on a loop device (direct I/O) for every run"


class GlusterTarget:
    """A private GlusterFS made by scripts/netfs.sh (its own glusterd on 127.0.0.12, so the
    test suite's instance is never touched), its brick on a new ext4 for every run; the
    target is a directory of volume `nsdefault` (default caching) through one FUSE mount."""

    name = "gluster"

    def __init__(self, ctx, size):
        self.ctx = ctx
        self.base = ctx.work / "gl" / "netfs"
        self.fs = LoopFS(ctx.work / "gl.img", ctx.work / "gl", size)
        self.mnt = None
        self.seq = 0
        self.env = dict(os.environ)
        self.env.update(
            NIX_SEED_NETFS_GLUSTER_HOST="127.0.0.12",
            NIX_SEED_NETFS_SSH_HOST="127.0.0.13",
            NIX_SEED_NETFS_SSH_PORT="2723",
        )

    def _netfs(self, verb):
        return out([REPO / "scripts" / "netfs.sh", verb, "--base", self.base], env=self.env, timeout=300)

    def start(self):
        self.fs.up()
        CLEANUP.append(("netfs down", self._down_netfs))
        text = self._netfs("up")
        kv = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        self.mnt = Path(kv["GLUSTER_DEFAULT_A"])

    def _down_netfs(self):
        if self.base.exists():
            run([REPO / "scripts" / "netfs.sh", "down", "--base", self.base], env=self.env, check=False, quiet=True)
        self.mnt = None

    def fresh(self, small=False):
        """A new instance on a new brick filesystem; `small`: a new directory on the running
        instance (for the few-file real store)."""
        if not small or self.mnt is None:
            self.release()
            self.start()
        self.seq += 1
        d = self.mnt / f"run{self.seq}"
        d.mkdir()
        return d

    def release(self):
        self._down_netfs()
        self.fs.down()

    def describe(self):
        v = out(["glusterfs", "--version"], check=False).splitlines()
        return (f"{v[0] if v else 'GlusterFS'}, private instance made by `scripts/netfs.sh up --base ...` "
                "(glusterd, brick and FUSE client on this machine, volume `nsdefault` with default "
                "caching), brick on a new ext4 loop filesystem for every run")


# ---------------------------------------------------------------------------------------


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


def overlay_up(ctx, wl):
    """The source as a chroot store root for `nix copy`, its writes kept off the source."""
    o = ctx.work / "ovl"
    m = ctx.work / "mnt" / "nixsrc"
    o.mkdir(parents=True, exist_ok=True)
    m.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", o], quiet=True)
    CLEANUP.append(("umount ovl tmpfs", lambda: umount(o)))
    (o / "upper").mkdir()
    (o / "work").mkdir()
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={wl.root},upperdir={o}/upper,workdir={o}/work", m], quiet=True)
    CLEANUP.append(("umount overlay", lambda: umount(m)))
    ctx.overlay_root = m


def overlay_down(ctx):
    umount(ctx.work / "mnt" / "nixsrc")
    umount(ctx.work / "ovl")


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


# ---------------------------------------------------------------------------------------
# Results and the report


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


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_s(x):
    if x != x:
        return "–"
    if x < 0.1:
        return f"{x * 1000:.1f} ms"
    if x < 10:
        return f"{x:.2f} s"
    return f"{x:.1f} s"


def fmt_ratio(x):
    return "–" if x is None or x != x else f"{x:.2f}×"


def group(results, **kw):
    return [r for r in results if all(r.get(k) == v for k, v in kw.items()) and not r.get("problem")]


def per_round_ratio(results, base_key, other_key, **kw):
    """Median over rounds of wall(other)/wall(base), both from the same round."""
    rs = group(results, **kw)
    by = {}
    for r in rs:
        by.setdefault(r["round"], {})[r["contender"]] = r["wall"]
    ratios = [d[other_key] / d[base_key] for d in by.values() if base_key in d and other_key in d and d[base_key] > 0]
    return (med(ratios), min(ratios), max(ratios)) if ratios else (None, None, None)


def best_seed(results, **kw):
    walls = {}
    for r in group(results, **kw):
        if r["contender"].startswith("seed-"):
            walls.setdefault(r["contender"], []).append(r["wall"])
    if not walls:
        return None
    return min(walls, key=lambda k: med(walls[k]))


def copy_table(ctx, wl_key, target, mode, contenders):
    rs = group(ctx.results, phase="copy", workload=wl_key, target=target, mode=mode)
    if not rs:
        return None
    st = ctx.workloads[wl_key].stats
    best = best_seed(ctx.results, phase="copy", workload=wl_key, target=target, mode=mode)
    kw = dict(phase="copy", workload=wl_key, target=target, mode=mode)
    lines = [
        f"| contender | wall (median, min–max) | CPU user+sys | peak RSS | files/s | MiB/s | "
        f"time ÷ nix-seed best (-j{best[6:] if best else '?'}) | time ÷ nix-seed -j8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in contenders:
        cr = [r for r in rs if r["contender"] == c.key]
        failed = [r for r in ctx.results if r.get("phase") == "copy" and r["workload"] == wl_key
                  and r["target"] == target and r["mode"] == mode and r["contender"] == c.key and r.get("problem")]
        if not cr:
            if failed:
                lines.append(f"| {c.label} | failed: {failed[0]['problem'].splitlines()[0][:80]} | | | | | | |")
            continue
        w = med([r["wall"] for r in cr])
        cpu = med([r["cpu"] for r in cr])
        rss = max(r["maxrss_kib"] for r in cr) / 1024
        rb = per_round_ratio(ctx.results, best, c.key, **kw) if best else (None,) * 3
        r8 = per_round_ratio(ctx.results, "seed-j8", c.key, **kw)
        span = f"{fmt_s(min(r['wall'] for r in cr))}–{fmt_s(max(r['wall'] for r in cr))}"
        name = f"**{c.label}**" if c.key == best else c.label
        rounds = max(r["round"] for r in rs)
        n = f" ({len(cr)} of {rounds} runs)" if len(cr) != rounds else ""
        lines.append(
            f"| {name}{n} | {fmt_s(w)} ({span}) | {cpu:.2f} s | {rss:.1f} MiB | {st['files'] / w:,.0f} | "
            f"{st['bytes'] / MIB / w:,.1f} | {fmt_ratio(rb[0])} | {fmt_ratio(r8[0])} |"
        )
    bg = [r["bg_cpu"] / r["wall"] for r in rs if r["wall"] > 0]
    loads = [r["load1"] for r in rs]
    lines.append("")
    lines.append(f"{max(r['round'] for r in rs)} rounds. " if loads else "")
    others = ("other processes (on GlusterFS these include its client and brick daemons, which do most of "
              "the copy's work: the CPU column counts only the contender's own processes)"
              if target == "gluster" else "other processes")
    lines[-1] += (
        f"Background: load average (1 min) at run start {min(loads):.1f}–{max(loads):.1f} (median "
        f"{med(loads):.1f}); {others} used a median {med(bg):.2f} of the {os.cpu_count()} CPUs during runs."
        if loads else "")
    return "\n".join(lines)


def noop_table(ctx, target):
    rs = group(ctx.results, phase="noop", target=target)
    if not rs:
        return None
    lines = ["| mode | contender | wall (median, min–max) | CPU user+sys | peak RSS | time ÷ nix-seed |",
             "|---|---|---|---|---|---|"]
    for mode in ("warm", "cold"):
        for key, label in (("seed-j8", "nix-seed (fast path)"), ("rsync-ie", "`rsync -a --ignore-existing`"),
                           ("nixcopy", "`nix copy`")):
            cr = [r for r in rs if r["mode"] == mode and r["contender"] == key]
            if not cr:
                continue
            w = med([r["wall"] for r in cr])
            ratio = per_round_ratio(ctx.results, "seed-j8", key, phase="noop", target=target, mode=mode)
            span = f"{fmt_s(min(r['wall'] for r in cr))}–{fmt_s(max(r['wall'] for r in cr))}"
            lines.append(f"| {mode} | {label} | {fmt_s(w)} ({span}) | {med([r['cpu'] for r in cr]):.3f} s | "
                         f"{max(r['maxrss_kib'] for r in cr) / 1024:.1f} MiB | {fmt_ratio(ratio[0])} |")
    return "\n".join(lines)


def checks(ctx):
    """The issue's targets, PASS/MISS, judged on nix-seed's default (-j8) and also its best."""
    res = []

    def ratio(target, mode, other, base="seed-j8"):
        return per_round_ratio(ctx.results, base, other, phase="copy", workload="synth", target=target, mode=mode)[0]

    def verdict(ok):
        return "–" if ok is None else ("PASS" if ok else "MISS")

    def best(target, mode):
        return best_seed(ctx.results, phase="copy", workload="synth", target=target, mode=mode)

    def both(target, mode, other, need):
        r8 = ratio(target, mode, other)
        b = best(target, mode)
        rb = ratio(target, mode, other, b) if b else None
        ok = None if r8 is None else r8 >= need
        s = f"{fmt_ratio(r8)} with -j8" + (f", {fmt_ratio(rb)} with -{b[5:]}" if b and b != "seed-j8" else "")
        return ok, s

    if "ext4" in ctx.targets:
        ok, s = both("ext4", "cold", "cp", 2.0)
        res.append(("cold seed, local ext4: ≥ 2× faster than `cp -a`", s, verdict(ok)))
        ok1, s1 = both("ext4", "warm", "cp", 1.7)
        ok2, s2 = both("ext4", "warm", "rsync-aH", 3.0)
        ok = None if ok1 is None or ok2 is None else (ok1 and ok2)
        res.append(("warm seed, local ext4: ≥ 1.7× faster than `cp -a` and ≥ 3× than `rsync -aH`",
                    f"`cp -a` {s1}; `rsync -aH` {s2}", verdict(ok)))
    if "gluster" in ctx.targets and group(ctx.results, phase="copy", target="gluster", workload="synth"):
        for mode in ctx.gl_modes:
            rs = group(ctx.results, phase="copy", workload="synth", target="gluster", mode=mode)
            others = sorted({r["contender"] for r in rs if not r["contender"].startswith("seed-")})
            rr = {o: ratio("gluster", mode, o) for o in others}
            ok = all(v is not None and v > 1.0 for v in rr.values()) if rr else None
            worst = min(rr, key=lambda o: rr[o] if rr[o] is not None else 0) if rr else None
            s = (f"`cp -a` {fmt_ratio(rr.get('cp'))}; closest: {worst} {fmt_ratio(rr.get(worst))}"
                 if rr else "no data")
            res.append((f"GlusterFS ({mode}): nix-seed -j8 faster than every contender", s, verdict(ok)))
    for target in ctx.targets:
        r = per_round_ratio(ctx.results, "seed-j8", "rsync-ie", phase="noop", target=target, mode="warm")[0]
        if r is not None:
            res.append((f"no-op on a seeded target ({target}, warm): ≥ 100× faster than `rsync -a --ignore-existing`",
                        fmt_ratio(r), verdict(r >= 100)))
    g = group(ctx.results, phase="noop", target="gluster", contender="seed-j8")
    if g:
        for mode in ("warm", "cold"):
            w = med([r["wall"] for r in g if r["mode"] == mode])
            if w == w:
                res.append((f"no-op on GlusterFS ({mode}), {ctx.workloads['synth'].stats['paths']:,} store paths: "
                            f"under 200 ms", fmt_s(w), verdict(w < 0.2)))
    sc = group(ctx.results, phase="copy", workload="scale", contender="seed-j8")
    if sc:
        rss = max(r["maxrss_kib"] for r in sc) / 1024
        cp = group(ctx.results, phase="copy", workload="scale", contender="cp")
        cps = f" (`cp -a`: {max(r['maxrss_kib'] for r in cp) / 1024:.1f} MiB)" if cp else ""
        res.append((f"peak RSS at {ctx.workloads['scale'].stats['files']:,} files under 64 MiB",
                    f"{rss:.1f} MiB{cps}", verdict(rss < 64)))
    size = ctx.meta["binary_bytes"]
    res.append(("release binary under 8 MiB", f"{size / MIB:.2f} MiB ({size:,} bytes)", verdict(size < 8 * MIB)))
    return res


def strace_table(ctx):
    if not ctx.strace:
        return None
    st = ctx.workloads["synth"].stats
    keys = set()
    for v in ctx.strace.values():
        keys |= set(v["calls"])
    ns = ctx.strace.get("seed-j8", {}).get("calls", {})
    cp = ctx.strace.get("cp", {}).get("calls", {})
    rows = sorted(keys, key=lambda k: -(ns.get(k, 0) + cp.get(k, 0)))
    lines = [f"Per copied file = calls ÷ {st['files']:,} files (regular files, symlinks and hardlink names; "
             f"{st['dirs']:,} directories).", "",
             "| syscall | nix-seed -j8 calls | per file | `cp -a` calls | per file |", "|---|---|---|---|---|"]
    for k in rows:
        a, b = ns.get(k, 0), cp.get(k, 0)
        if a + b < st["files"] / 100:
            continue
        lines.append(f"| {k} | {a:,} | {a / st['files']:.2f} | {b:,} | {b / st['files']:.2f} |")
    ta, tb = sum(ns.values()), sum(cp.values())
    lines.append(f"| **total** | {ta:,} | {ta / st['files']:.2f} | {tb:,} | {tb / st['files']:.2f} |")
    return "\n".join(lines)


def report(ctx, path):
    m = ctx.meta
    L = []
    L.append("# Benchmarks\n")
    L.append("Produced by `scripts/bench.sh` (issue 5); every number below comes from the one run described "
             "here. Regenerate with the command shown; the raw per-run data is kept in the work directory "
             "(`results.json`).\n")
    L.append(f"- **Command**: `{m['command']}`")
    L.append(f"- **Date**: {m['date']} (UTC); the run took **{m['duration']}**")
    L.append(f"- **Machine**: {m['cpu']}, {m['cores']} cores, {m['ram']} RAM, kernel {m['kernel']}, "
             f"{m['os']}; work directory on {m['workfs']}")
    L.append(f"- **Source**: its own ext4 on a loop device (direct I/O) backed by a file on that disk, "
             f"made and filled once per benchmark run")
    L.append(f"- **Targets**: " + "; ".join(m["target_desc"]))
    L.append(f"- **Tools**: {m['tools']}")
    L.append(f"- **nix-seed**: {m['nix_seed_version']}, release binary {m['binary_bytes']:,} bytes, git {m['git']}")
    L.append(f"- **Also running on the machine**: {m['background']}. Each table states the load during its runs.")
    L.append(f"- **Method**: {ctx.runs} rounds on ext4, {ctx.gl_runs} on GlusterFS, "
             f"{ctx.scale_runs} for the scale run (each table "
             f"says); in every round each contender runs once, the order "
             f"rotating by one each round, each on a fresh destination. *Cold*: `sync; echo 3 > "
             f"/proc/sys/vm/drop_caches` right before the command. *Warm*: the whole source read "
             f"(`tar -cf - . | cat`) right before. Wall time of the command alone (no contender calls "
             f"`fsync`; writeback happens at unmount, not timed). CPU = user+sys of the whole process tree and "
             f"peak RSS = largest process (`wait4` rusage, read through GNU time). files/s and MiB/s use the workload's counts "
             f"(files = regular files + symlinks + hardlink names; MiB = distinct file data) for every contender. "
             f"Ratios are medians over rounds of (contender's time ÷ nix-seed's time in the same round): "
             f"above 1 means nix-seed is faster.\n")
    L.append("## Targets\n")
    L.append("| target | measured | verdict |\n|---|---|---|")
    for what, s, v in checks(ctx):
        L.append(f"| {what} | {s} | **{v}** |")
    L.append("")
    L.append("## Workloads\n")
    L.append("| workload | store paths | files | regular | symlinks | extra hardlinks | directories | data |")
    L.append("|---|---|---|---|---|---|---|---|")
    for k, w in ctx.workloads.items():
        s = w.stats
        L.append(f"| {w.title} | {s['paths']:,} | {s['files']:,} | {s['regular']:,} | {s['symlinks']:,} | "
                 f"{s['hardlinks']:,} | {s['dirs']:,} | {s['bytes'] / MIB:,.0f} MiB |")
    L.append("")
    for k, w in ctx.workloads.items():
        if w.gen_line:
            L.append(f"- {w.key}: `{w.gen_cmd}` → {w.gen_line}")
    L.append("")
    L.append(
        "What each contender copies: `cp -a SRC/. DST/`, `rsync -aH SRC/ DST/` and `tar` copy the whole Nix root "
        "(`store/` including `store/.links`, and `var/` with its lock files) and keep hardlinks; "
        "`rsync -a --ignore-existing` does not keep hardlinks (each extra name is a full copy). "
        "None of them registers anything. nix-seed copies the store paths (not `.links`), then `var/` without "
        "runtime files, copies the database and writes GC roots. `nix copy --all --no-check-sigs` "
        f"(`{m['nixcopy_cmd']}`) serialises every path to a NAR, checks its hash, unpacks it and registers it in "
        "a new database; it does not keep hardlinks, copies no `var/` beyond its database, and reads the "
        "source through an overlay mount (its writes to the source's `var/` go to a tmpfs).\n")
    for wl_key, w in ctx.workloads.items():
        for target in ctx.targets:
            for mode in ("cold", "warm"):
                t = copy_table(ctx, wl_key, target, mode, ctx.contenders_all)
                if t:
                    L.append(f"## {w.title} → {target}, {mode}\n")
                    L.append(t)
                    L.append("")
    for target in ctx.targets:
        t = noop_table(ctx, target)
        if t:
            L.append(f"## No-op on a fully seeded target → {target}\n")
            L.append(f"{ctx.workloads['synth'].stats['paths']:,} store paths already in the target "
                     f"(seeded by nix-seed into DST/nix); each contender ran once untimed first "
                     f"(rsync then adds `store/.links` and `var/`'s lock files, nix copy converts the database to WAL), "
                     f"then {ctx.noop_runs} rounds. *Cold*: caches dropped before each run; *warm*: the same command ran "
                     f"once, untimed, right before. `nix copy` re-checks the validity of every path in the target's database.\n")
            L.append(t)
            L.append("")
    t = strace_table(ctx)
    if t:
        L.append("## Syscalls per copied file (synthetic workload → ext4, warm)\n")
        L.append("`strace -c -f` of one `nix-seed seed -j8` and one `cp -a` (strace slows both; counts, "
                 "not times, are what matter). Analysis: [docs/notes/perf.md](docs/notes/perf.md).\n")
        L.append(t)
        L.append("")
    if ctx.notes:
        L.append("## Notes\n")
        for n in ctx.notes:
            L.append(f"- {n}")
        L.append("")
    Path(path).write_text("\n".join(L))
    log(f"wrote {path}")


# ---------------------------------------------------------------------------------------


def machine_meta(ctx, argv):
    def first(cmd):
        try:
            return out(cmd, check=False).splitlines()[0].strip()
        except Exception:
            return "?"

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    workfs = out(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", ctx.work], check=False).strip()
    ps = out(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], check=False).splitlines()
    busy = [f"{p.split(None, 1)[1]} ({p.split()[0]}% CPU)" for p in ps[:8]
            if p.strip() and float(p.split()[0]) >= 2.0 and "python" not in p and " ps" not in p]
    return {
        "command": " ".join(["scripts/bench.sh"] + [shlex.quote(a) for a in argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram": f"{mem / GIB:.1f} GiB",
        "kernel": platform.release(),
        "os": first(["bash", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
        "workfs": workfs or "?",
        "tools": "; ".join([
            first(["cp", "--version"]), first(["rsync", "--version"]).split("  ")[0],
            first(["tar", "--version"]), first(["nix", "--version"]) if shutil.which("nix") else "nix: not installed",
        ]),
        "nix_seed_version": first([ctx.bin, "--version"]),
        "binary_bytes": os.stat(ctx.bin).st_size,
        "git": first(["git", "-C", REPO, "describe", "--always", "--dirty"]),
        "background": (f"load average {os.getloadavg()[0]:.1f} at start; busiest other processes at start: "
                       + (", ".join(busy) if busy else "none above 2% CPU")),
        "nixcopy_cmd": "nix --extra-experimental-features nix-command copy --store 'local?root=SRCROOT' "
                       "--to 'local?root=DSTROOT' --all --no-check-sigs",
    }


def report_from(a):
    """Render the report again from a run's results.json (the numbers are that run's)."""
    data = json.loads(Path(a.report_from).read_text())
    ctx = Ctx()
    ctx.results, ctx.strace, ctx.meta = data["results"], data.get("strace", {}), data["meta"]
    cfg = data.get("config", {})

    def rounds(**kw):
        rs = [r["round"] for r in ctx.results if all(r.get(k) == v for k, v in kw.items())]
        return max(rs) if rs else 3

    ctx.runs = cfg.get("runs") or rounds(phase="copy", target="ext4", workload="synth")
    ctx.gl_runs = cfg.get("gl_runs") or rounds(phase="copy", target="gluster", workload="synth")
    ctx.noop_runs = cfg.get("noop_runs") or rounds(phase="noop", target="ext4")
    ctx.notes = cfg.get("notes", [])
    ctx.scale_runs = cfg.get("scale_runs") or rounds(phase="copy", workload="scale")
    ctx.targets = cfg.get("targets") or [t for t in ("ext4", "gluster") if any(r["target"] == t for r in ctx.results)]
    ctx.gl_modes = ["cold", "warm"]
    jobs = cfg.get("jobs") or sorted({int(r["contender"][6:]) for r in ctx.results if r["contender"].startswith("seed-j")})
    ctx.have_nix = cfg.get("have_nix", True)
    ctx.contenders_all = [c for c in all_contenders(jobs) if ctx.have_nix or c.kind != "nixcopy"]
    ctx.workloads = {}
    for k, w in data["workloads"].items():
        wl = Workload(k, w["title"], "/")
        wl.gen_cmd, wl.gen_line = w.get("gen_cmd"), w.get("gen_line")
        wl.stats = w
        ctx.workloads[k] = wl
    out_path = Path(a.out) if a.out else REPO / "BENCHMARKS.md"
    report(ctx, out_path)
    for what, s, v in checks(ctx):
        print(f"{v:5s} {what}: {s}")


def main():
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
    a = ap.parse_args()
    if a.report_from:
        return report_from(a)
    if os.geteuid() != 0:
        sys.exit("bench: must run as root (loop devices, mounts, drop_caches)")

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

    # Work directory (never on tmpfs: the loop images are sparse files of several GiB).
    if ctx.work.exists():
        for p in ["mnt/dst", "mnt/src", "mnt/nixsrc", "ovl", "gl", "mnt/scale-src"]:
            if is_mounted(ctx.work / p):
                sys.exit(f"bench: {ctx.work / p} is mounted (another benchmark running?)")
        shutil.rmtree(ctx.work, ignore_errors=True)
    (ctx.work / "mnt").mkdir(parents=True)
    ctx.logs = ctx.work / "logs"
    ctx.logs.mkdir()
    global RSS_FILE
    RSS_FILE = ctx.work / "maxrss"
    out_path = Path(a.out) if a.out else (ctx.work / "BENCHMARKS.quick.md" if a.quick else REPO / "BENCHMARKS.md")
    if not out_path.is_absolute():
        out_path = Path.cwd() / out_path

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    t_start = time.time()
    ctx.meta = machine_meta(ctx, shlex.split(a.argv))
    log(f"machine: {ctx.meta['cores']} cores, {ctx.meta['ram']}, kernel {ctx.meta['kernel']}; "
        f"{ctx.meta['background']}")
    try:
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

        # Targets.
        ctx.targets = []
        tgts = {}
        if "ext4" in targets:
            tgts["ext4"] = Ext4Target(ctx, ctx.dst_size)
            ctx.targets.append("ext4")
        ctx.meta["target_desc"] = []
        if "ext4" in tgts:
            ctx.meta["target_desc"].append("ext4: " + tgts["ext4"].describe())
        if "gluster" in targets:
            netfs = REPO / "scripts" / "netfs.sh"
            if not netfs.exists():
                ctx.notes.append("GlusterFS: scripts/netfs.sh does not exist, so only ext4 was measured.")
            else:
                g = GlusterTarget(ctx, ctx.dst_size)
                try:
                    g.fresh()
                    g.release()
                    tgts["gluster"] = g
                    ctx.targets.append("gluster")
                    ctx.meta["target_desc"].append("GlusterFS: " + g.describe())
                except Exception as e:
                    g.release()
                    ctx.notes.append(f"GlusterFS: `scripts/netfs.sh up` failed ({str(e).splitlines()[0]}), "
                                     f"so only ext4 was measured.")
                    log(f"gluster unavailable: {e}")

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
        if "scale" not in skip and "ext4" in targets:
            scale_phase(ctx, a.scale_runs)
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
