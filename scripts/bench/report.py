"""Report rendering: BENCHMARKS.md from the results (tables, per-round ratios, the
checks), the machine description, and --report-from."""

import datetime
import json
import os
import platform
import re
import shlex
import shutil
import statistics
from pathlib import Path

from .common import GIB, MIB, REPO, log, out
from .run import Ctx, Workload, all_contenders


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
