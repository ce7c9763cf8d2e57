"""nix-seed on a slow network disk (issue 13): the delayed GlusterFS volume of
scripts/netfs.sh (debug/delay-gen: every file operation at the brick late by 0.5, 1 or
2 ms, concurrent operations overlapping), with

1. operations at the brick per store entry (`gluster volume profile`) for `cp -a`, for
   a nix-seed seed and for the no-op (plus the no-op's syscalls, `strace -c -f`);
2. times of `cp -a`, nix-seed with its default jobs and with --jobs 1 at each delay,
   and the ideal (entries x operations per entry x delay / jobs); medians of the
   per-round ratios (contenders run round-robin, the order rotating every round);
3. nix-seed at several --jobs at one delay (what the default should be);
4. the no-op's time at each delay.

Run through `scripts/bench.sh --latency [options]`, which builds the release binary and
the store generator first; prints markdown tables (and writes them into a file between
`<!-- latency:begin -->` and `<!-- latency:end -->` with --into). Needs root and
scripts/netfs.sh (brought up if needed; left up, with the delay reset to 1 ms).
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO, log, out, run

NETFS = REPO / "scripts" / "netfs.sh"
VOL = "nsdelay"
# One-way messages (the client does not wait for an answer) and what delay-gen leaves alone.
NOT_ROUND_TRIPS = {"RELEASE", "RELEASEDIR", "FORGET"}


def netfs(*args):
    o = out(["bash", NETFS, *args])
    return dict(l.split("=", 1) for l in o.splitlines() if "=" in l)


def gluster(env, *args):
    sock = Path(env["NETFS_BASE"]) / "gluster/run/glusterd.socket"
    return out(["gluster", "--mode=script", f"--glusterd-sock={sock}", *args])


def set_delay(us):
    return netfs("delay", str(us))


def profile_ops(text):
    """Calls per fop from `gluster volume profile VOL info cumulative` (the brick's table)."""
    ops = {}
    for line in text.splitlines():
        m = re.match(r"^\s*[\d.]+\s+[\d.]+ [nu]s\s+[\d.]+ [nu]s\s+[\d.]+ [nu]s\s+(\d+)\s+([A-Z]+)\s*$", line)
        if m:
            ops[m.group(2)] = ops.get(m.group(2), 0) + int(m.group(1))
    return ops


def entries(store):
    """Entries below a store (files, symlinks, directories; each store path's top too)."""
    n = 0
    for _root, dirs, files in os.walk(store):
        n += len(dirs) + len(files)
    return n


class Bench:
    def __init__(self, a):
        self.a = a
        self.bin = Path(a.bin).resolve()
        self.work = Path(a.workdir)
        self.src = self.work / "src"
        self.env = netfs("up")
        self.mnt = Path(self.env["GLUSTER_DELAY_A"])
        self.n = 0
        self.trash = []

    def make_store(self):
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        o = out([self.a.gen, self.src, "--paths", self.a.paths, "--files", self.a.files,
                 "--bytes", self.a.bytes, "--big-path", self.a.big_path])
        log(o.strip())
        self.store_line = o.strip().split(": ", 1)[1].split("; created")[0]
        self.entries = entries(self.src / "store")
        # The biggest store path's entries (with its top): one worker copies a store path.
        self.biggest = max(entries(p) + 1 if p.is_dir() else 1 for p in (self.src / "store").iterdir())

    def fresh(self):
        self.n += 1
        d = self.mnt / f"lat-{os.getpid()}-{self.n}"
        d.mkdir()
        self.trash.append(d)
        return d

    def argv(self, c, dst):
        if c == "cp":
            return ["cp", "-a", f"{self.src}/store", f"{dst}/"]
        jobs = [] if c == "seed" else ["--jobs", c.split("-j")[1]]
        return [self.bin, "seed", "--source", self.src, "--target", dst, "--allow-non-mountpoint", *jobs]

    def timed(self, argv, log_name):
        t0 = time.perf_counter()
        with open(self.work / f"{log_name}.log", "wb") as f:
            r = subprocess.run([str(x) for x in argv], stdout=f, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"bench: {argv[0]} exited {r.returncode}; see {self.work / (log_name + '.log')}")
        return wall

    def jobs_used(self, log_name):
        """The jobs a seed ran with, from its start line (`N jobs`), if it says."""
        t = (self.work / f"{log_name}.log").read_text(errors="replace")
        m = re.search(r"(\d+) jobs?\b(?: \(([^)]*)\))?", t)
        return m.group(0) if m else None

    def empty_trash(self):
        """Remove every target made so far, at delay 0 (on the slow volume a cleanup would
        take as long as the copies)."""
        if not self.trash:
            return
        set_delay(0)
        procs = [subprocess.Popen(["rm", "-rf", "--one-file-system", str(d)]) for d in self.trash]
        for p in procs:
            p.wait()
        self.trash = []

    # -- 1. operation counts ------------------------------------------------------------

    def counts(self, delay):
        set_delay(delay)
        gluster(self.env, "volume", "profile", VOL, "start")
        res = {}
        try:
            for c in ["cp", "seed", "seed-j1", "noop"]:
                dst = self.fresh()
                if c == "noop":
                    self.timed(self.argv("seed", dst), "count-noop-first")
                gluster(self.env, "volume", "profile", VOL, "info", "clear")
                argv = self.argv("seed" if c == "noop" else c, dst)
                if c == "noop":
                    argv = ["strace", "-c", "-f", "-o", self.work / "noop.strace"] + argv
                self.timed(argv, f"count-{c}")
                res[c] = profile_ops(gluster(self.env, "volume", "profile", VOL, "info", "cumulative"))
            res["noop-strace"] = strace_summary(self.work / "noop.strace")
        finally:
            gluster(self.env, "volume", "profile", VOL, "stop")
        return res

    # -- 5. the no-op with every cache dropped ------------------------------------------

    def cold_noop(self, delay, runs):
        """The no-op through a freshly mounted client (mount B unmounted, then remounted
        by `netfs.sh up`) after `drop_caches`: nothing of the target is cached anywhere,
        neither in the kernel nor in GlusterFS's client (nor in the brick's page cache).
        Returns (seconds per run, round trips of the last run at the brick)."""
        set_delay(delay)
        dst = self.fresh()
        self.timed(self.argv("seed", dst), f"cold-{delay}-first")
        mnt_b = Path(self.env["GLUSTER_DELAY_B"])
        through_b = mnt_b / dst.name
        times, ops = [], {}
        gluster(self.env, "volume", "profile", VOL, "start")
        try:
            for r in range(runs):
                run(["umount", mnt_b])
                netfs("up")
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
                gluster(self.env, "volume", "profile", VOL, "info", "clear")
                argv = [self.bin, "seed", "--source", self.src, "--target", through_b, "--allow-non-mountpoint"]
                times.append(self.timed(argv, f"cold-{delay}-{r}"))
                ops = profile_ops(gluster(self.env, "volume", "profile", VOL, "info", "cumulative"))
                log(f"cold no-op at {delay} us, run {r + 1}/{runs}: {times[-1] * 1000:.0f} ms, "
                    f"{round_trips(ops)} round trips")
        finally:
            gluster(self.env, "volume", "profile", VOL, "stop")
        self.empty_trash()
        return times, ops

    # -- 2.-4. times --------------------------------------------------------------------

    def rounds(self, delay, contenders, runs, tag):
        set_delay(delay)
        times = {c: [] for c in contenders}
        used = {}
        for r in range(runs):
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for c in order:
                dst = self.fresh()
                name = f"{tag}-{delay}-{c}-{r}"
                if c == "noop":
                    self.timed(self.argv("seed", dst), name + "-first")
                    times[c].append(self.timed(self.argv("seed", dst), name))
                else:
                    times[c].append(self.timed(self.argv(c, dst), name))
                if c.startswith("seed"):
                    used[c] = self.jobs_used(name) or used.get(c)
                log(f"{tag} {delay} us, round {r + 1}/{runs}: {c} {times[c][-1]:.2f}s")
        self.empty_trash()
        return times, used


def strace_summary(path):
    """(total syscalls, {name: calls}) from `strace -c -f -o`."""
    calls, total = {}, 0
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            n = int(f[3])
            calls[f[-1]] = n
        elif f and f[-1] == "total":
            total = int(f[3])
    return total, calls


def med(v):
    return statistics.median(v)


def ratio(a, b):
    """Median of the per-round ratios a[i] / b[i]."""
    return med([x / y for x, y in zip(a, b)])


def round_trips(ops):
    return sum(n for op, n in ops.items() if op not in NOT_ROUND_TRIPS)


def count_tables(b, res, delay):
    e = b.entries
    cs = [("cp", "`cp -a`"), ("seed", "nix-seed (default jobs)"), ("seed-j1", "nix-seed --jobs 1")]
    lines = [f"Operations at the brick (`gluster volume profile {VOL} info cumulative`) for one copy of "
             f"the store ({e:,} entries: files, symlinks, directories) into an empty directory, at "
             f"{delay} us per operation; per entry, and in all:", "",
             "| operation | " + " | ".join(n for _, n in cs) + " |", "|---|" + "---:|" * len(cs)]
    fops = sorted({op for c, _ in cs for op in res[c]}, key=lambda op: -max(res[c].get(op, 0) for c, _ in cs))
    for op in fops:
        lines.append(f"| {op} | " + " | ".join(f"{res[c].get(op, 0) / e:.2f}" for c, _ in cs) + " |")
    lines.append("| **round trips** (all but " + ", ".join(sorted(NOT_ROUND_TRIPS)) + ") | " +
                 " | ".join(f"**{round_trips(res[c]) / e:.2f}** ({round_trips(res[c]):,})" for c, _ in cs) + " |")
    total, calls = res["noop-strace"]
    top = ", ".join(f"{k} {v}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:12])
    noop = ", ".join(f"{op} {n}" for op, n in sorted(res["noop"].items(), key=lambda kv: -kv[1]))
    lines += ["", f"The no-op (a second seed of the same image into the seeded target): "
              f"**{round_trips(res['noop'])} round trips** at the brick ({noop or 'none'}); "
              f"{total} syscalls (`strace -c -f`; {top}).", ""]
    return lines


def time_table(b, times, jobs_note):
    e = b.entries
    lines = [f"Seconds (median of {b.a.runs} rounds); the ratios are medians of the per-round ratios. "
             f"*ideal* = entries x round trips per entry (nix-seed's, from the table above) x delay / "
             f"jobs: what the round trips cost if nothing else did; *ideal, one worker per store path*: "
             f"the same with the biggest store path ({b.biggest:,} entries) copied by one worker, "
             f"max(entries / jobs, biggest) x round trips per entry x delay.", "",
             "| delay per op | `cp -a` | nix-seed (default jobs) | nix-seed --jobs 1 | ideal, default jobs "
             "| ideal, one worker per store path | ideal, --jobs 1 | `cp -a` / nix-seed | `cp -a` / nix-seed -j1 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for delay, (t, rt, jobs) in times.items():
        per = rt / e

        def ideal(n):
            return n * per * delay / 1e6

        lines.append(f"| {delay / 1000:g} ms | {med(t['cp']):.1f} | {med(t['seed']):.1f} | {med(t['seed-j1']):.1f} "
                     f"| {ideal(e / jobs):.1f} | {ideal(max(e / jobs, b.biggest)):.1f} | {ideal(e):.1f} "
                     f"| **{ratio(t['cp'], t['seed']):.1f}x** | {ratio(t['cp'], t['seed-j1']):.2f}x |")
    return lines + ["", f"Default jobs: {jobs_note}.", ""]


def time_tables(b, times, jobs_note, jsweep, noop):
    lines = time_table(b, times, jobs_note) if times else []
    if jsweep:
        delay, t = jsweep
        base = "seed-j8" if "seed-j8" in t else next(iter(t))
        lines += [f"nix-seed at {delay / 1000:g} ms per operation by --jobs (seconds, median of {b.a.runs} rounds):",
                  "", "| --jobs | seconds | speed-up over -j" + base.split("-j")[1] + " |", "|---:|---:|---:|"]
        for c, v in t.items():
            lines.append(f"| {c.split('-j')[1]} | {med(v):.1f} | {ratio(t[base], v):.2f}x |")
        lines.append("")
    if noop:
        lines += ["The no-op on the seeded target (milliseconds, median of "
                  f"{b.a.runs} runs): " + ", ".join(f"{d / 1000:g} ms/op: **{med(v) * 1000:.0f} ms**"
                                                      for d, v in noop.items()), ""]
    return lines


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="scripts/bench.sh --latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delays", default="500,1000,2000", help="microseconds per operation (default 500,1000,2000)")
    ap.add_argument("--runs", type=int, default=3, help="rounds per delay (default 3)")
    ap.add_argument("--paths", type=int, default=50, help="store paths (default 50)")
    ap.add_argument("--files", type=int, default=2000, help="files in all (default 2,000)")
    ap.add_argument("--big-path", type=int, default=1000, help="files of the one big store path (default 1,000)")
    ap.add_argument("--bytes", type=int, default=40 << 20, help="bytes in all (default 40 MiB)")
    ap.add_argument("--jobs-sweep", default="8,16,32,64",
                    help="--jobs values measured at --sweep-delay ('' to skip; default 8,16,32,64)")
    ap.add_argument("--sweep-delay", type=int, default=1000, help="delay of the --jobs sweep (default 1000)")
    ap.add_argument("--count-delay", type=int, default=1000, help="delay while counting operations (default 1000)")
    ap.add_argument("--cold-delays", default="0,1000",
                    help="delays at which the no-op is measured with every cache dropped (default 0,1000)")
    ap.add_argument("--skip", default="", help="comma-separated: counts,times,sweep,noop,cold")
    ap.add_argument("--into", help="write the tables into this file between the latency markers")
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "nix-seed-bench-latency"))
    ap.add_argument("--bin", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--gen", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--argv", default="", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main():
    a = parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: must run as root (scripts/netfs.sh)")
    skip = set(filter(None, a.skip.split(",")))
    t_start = time.time()
    b = Bench(a)
    b.make_store()
    delays = [int(d) for d in a.delays.split(",")]
    md = [f"Store: {b.store_line} ({b.entries:,} entries with directories), made by "
          f"`bench_store DIR --paths {a.paths} --files {a.files} --bytes {a.bytes} --big-path {a.big_path}`; "
          f"target: a fresh directory of GlusterFS volume `{VOL}` (`scripts/netfs.sh`, debug/delay-gen "
          f"above the brick's storage/posix). Machine: {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the start.", ""]
    rt = None
    try:
        if "counts" not in skip:
            res = b.counts(a.count_delay)
            b.empty_trash()
            rt = round_trips(res["seed"])
            md += count_tables(b, res, a.count_delay)
        times, noop, jsweep, jobs_note = {}, {}, None, "not measured"
        for d in delays:
            cs = [] if "times" in skip else ["cp", "seed", "seed-j1"]
            cs += [] if "noop" in skip else ["noop"]
            if not cs:
                break
            t, used = b.rounds(d, cs, a.runs, "times")
            if "noop" in t:
                noop[d] = t.pop("noop")
            if t:
                jobs_note = used.get("seed") or "nix-seed did not say (8 before issue 13)"
                m = re.match(r"(\d+)", jobs_note)
                times[d] = (t, rt or 0, int(m.group(1)) if m else 8)
        if a.jobs_sweep and "sweep" not in skip:
            cs = [f"seed-j{j}" for j in a.jobs_sweep.split(",")]
            jsweep = (a.sweep_delay, b.rounds(a.sweep_delay, cs, a.runs, "sweep")[0])
        md += time_tables(b, times, jobs_note, jsweep, noop)
        if "cold" not in skip and a.cold_delays:
            md += ["The no-op with every cache dropped (the target's client unmounted and mounted again, "
                   "then `echo 3 > /proc/sys/vm/drop_caches`), through that fresh mount; milliseconds, "
                   f"median of {a.runs} runs, and the round trips at the brick:", "",
                   "| delay per op | no-op, cold | round trips |", "|---:|---:|---|"]
            for d in [int(x) for x in a.cold_delays.split(",")]:
                t, ops = b.cold_noop(d, a.runs)
                detail = ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda kv: -kv[1])
                                   if op not in NOT_ROUND_TRIPS)
                md.append(f"| {d / 1000:g} ms{' (plain GlusterFS)' if d == 0 else ''} | **{med(t) * 1000:.0f}** "
                          f"| {round_trips(ops)}: {detail} |")
            md.append("")
    finally:
        b.empty_trash()
        set_delay(1000)
    dur = time.time() - t_start
    # (bash's printf %q escapes commas, which need none)
    cmd = " ".join(["scripts/bench.sh --latency", a.argv.strip().replace("\\,", ",")]).strip()
    md += [f"Command: `{cmd}`; took {int(dur // 60)} min {int(dur % 60)} s."]
    text = "\n".join(md) + "\n"
    print(text)
    if a.into:
        p = Path(a.into)
        s = p.read_text()
        begin, end = "<!-- latency:begin -->", "<!-- latency:end -->"
        if begin not in s or end not in s:
            sys.exit(f"bench: {p} has no {begin} ... {end} section")
        p.write_text(s.split(begin)[0] + begin + "\n" + text + end + s.split(end, 1)[1])
        log(f"tables written into {p}")


if __name__ == "__main__":
    main()
