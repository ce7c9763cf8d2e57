"""Filesystem setup for the benchmark: loop-device ext4, private GlusterFS instances
(scripts/netfs.sh), the overlay used by the no-op runs, caches and store statistics."""

import os
import stat as S
import sys
import time
from pathlib import Path

from .common import CLEANUP, REPO, log, out, run


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


def make_targets(ctx):
    """The destination filesystems asked for that work: ext4, and GlusterFS if
    scripts/netfs.sh brings it up (otherwise a note says why it was left out)."""
    targets = ctx.target_names
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
    return tgts
