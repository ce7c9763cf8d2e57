"""Issue 20's benchmark: `nix-seed gc` (scripts/bench.sh --gc).

1. A store of --paths store paths (default 10,000) built by real Nix 2.8 (Debian nix-bin),
   half of them garbage: a fifth `nix-store --add`ed trees (content-addressed, no
   references), the rest crafted outputs and `.drv` files registered by
   `nix-store --register-validity` (Nix hashes each path itself; references given, 0-6 per
   path, and written into the files; each `.drv` a parseable derivation naming its outputs,
   so DerivationOutputs is filled and keep-derivations has derivers to keep), then
   `nix-store --optimise` (store/.links). The live half is rooted by gcroots symlinks (some
   indirect: gcroots/auto -> var/gcbench-results/rN -> store path) and a profile with two
   generations; the garbage half refers to live and dead paths alike; plus --leftovers
   unregistered store entries. Each round, on two fresh `cp -a` copies of that store:
   `nix-seed gc --min-age 0` and `nix-store --gc`, each in a private mount namespace with
   its copy bind-mounted at /nix, both with one nix.conf (`use-sqlite-wal = false`,
   keep-derivations = true, keep-outputs = false), in alternating order; medians of
   --runs rounds (default 3) and the median of the per-round ratios. The benchmark fails
   unless both left exactly the same store entries and registrations, and says whether
   that is the garbage the generator made.
2. `nix-seed gc` with nothing to delete, on GlusterFS: the collected store copied to a
   volume of its own (nsgcbench, one brick, GlusterFS defaults) on scripts/netfs.sh's
   glusterd (brought up if needed, never brought down), FUSE-mounted once. Operations at
   the brick (`gluster volume profile nsgcbench`, round trips = every fop but RELEASE,
   RELEASEDIR, FORGET) and wall time, warm (same client, after one run) and cold (client
   freshly mounted; the brick's page cache stays warm; no drop_caches), medians of
   --gluster-runs runs; and the client's syscalls (`strace -c -f` of one warm run).
3. Peak RSS (GNU time) of `nix-seed gc --dry-run` and of a real run on a synthetic store of
   --big registered paths (default 100,000: a database filled with sqlite, one tiny file
   per path, chains of 10, half rooted), against `nix-store --gc --print-dead` and
   (first round only) `nix-store --gc --print-dead` on the same store, --rss-runs rounds
   (default 3); `--big-nix-gc` adds a real `nix-store --gc` (slow: a transaction per path).

Prints a markdown section; --into FILE puts it between FILE's `<!-- gc:begin -->` and
`<!-- gc:end -->` markers. Needs root (mount namespaces), nix-bin, sqlite3, GNU time,
strace, gluster (scripts/netfs.sh installs it).
"""

import argparse
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO, log, out, run
from .latency import profile_ops

B32 = "0123456789abcdfghijklmnpqrsvwxyz"
NETFS = REPO / "scripts" / "netfs.sh"
VOL = "nsgcbench"
NOT_ROUND_TRIPS = {"RELEASE", "RELEASEDIR", "FORGET"}
LICENSES = [f"Permission is hereby granted, free of charge (gc bench, variant {k}).\n" * 4 for k in range(3)]
NIX_CONF = """build-users-group =
use-sqlite-wal = false
keep-derivations = true
keep-outputs = false
substituters =
sandbox = false
"""


def nix_env(conf_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIX_")}
    env["NIX_CONF_DIR"] = str(conf_dir)
    return env


def at_nix(root, argv):
    """argv run in a private mount namespace with ROOT (a store's /nix) bind-mounted at /nix."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /nix && exec "$@"', str(root), *[str(a) for a in argv]]


def timed(argv, env=None, log_path=None):
    """Run argv under GNU time: (wall seconds, peak RSS KiB, output)."""
    tf = Path(f"/tmp/gcbench-time-{os.getpid()}")
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(tf)] + [str(a) for a in argv],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t0
    text = r.stdout.decode(errors="replace")
    if log_path:
        Path(log_path).write_text(text)
    if r.returncode != 0:
        sys.exit(f"gc bench: {shlex.join(str(a) for a in argv)} exited {r.returncode}:\n{text[-3000:]}")
    rss = int(tf.read_text().split()[-1])
    tf.unlink()
    return wall, rss, text


def med(v):
    return statistics.median(v)


def copy(src, dst):
    if dst.exists():
        rm(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", src, dst])


def rm(p):
    if p.exists():
        run(["rm", "-rf", "--one-file-system", p])


def store_state(root):
    """(store entries but dot-files, registered paths, .links entries) of a store's /nix."""
    names = {n for n in os.listdir(root / "store") if not n.startswith(".")}
    c = sqlite3.connect(f"file:{root / 'var/nix/db/db.sqlite'}?mode=ro", uri=True)
    valid = {p.rsplit("/", 1)[1] for (p,) in c.execute("SELECT path FROM ValidPaths")}
    c.close()
    links = len(os.listdir(root / "store/.links")) if (root / "store/.links").is_dir() else 0
    return names, valid, links


# ---------------------------------------------------------------------------------------
# Nix 2.8's derivations: the ATerm (Derivation::unparse) and input-addressed output paths

def drv_aterm(outputs, input_drvs, srcs, env, system="x86_64-linux", builder="/bin/sh", args=("-c", "true")):
    q = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    outs = ",".join(f"({q(n)},{q(p)},\"\",\"\")" for n, p in sorted(outputs))
    ins = ",".join(f"({q(k)},[{','.join(q(o) for o in sorted(v))}])" for k, v in sorted(input_drvs.items()))
    return (f"Derive([{outs}],[{ins}],[{','.join(q(s) for s in sorted(srcs))}],{q(system)},{q(builder)},"
            f"[{','.join(q(a) for a in args)}],[{','.join(f'({q(k)},{q(v)})' for k, v in sorted(env.items()))}])")


def nix_base32(b):
    n = len(b) * 8 // 5 + (1 if len(b) * 8 % 5 else 0)
    s = []
    for k in range(n - 1, -1, -1):
        bit = k * 5
        i, j = bit // 8, bit % 8
        c = (b[i] >> j) | ((b[i + 1] << (8 - j)) if i + 1 < len(b) else 0)
        s.append(B32[c & 0x1F])
    return "".join(s)


def make_output_path(output, drv_hash_hex, drv_name):
    """Store::makeOutputPath: makeStorePath("output:OUT", hash, name[-OUT])."""
    name = drv_name if output == "out" else f"{drv_name}-{output}"
    h = hashlib.sha256(f"output:{output}:sha256:{drv_hash_hex}:/nix/store:{name}".encode()).digest()
    c = bytearray(20)
    for i, x in enumerate(h):
        c[i % 20] ^= x
    return f"/nix/store/{nix_base32(bytes(c))}-{name}"


# ---------------------------------------------------------------------------------------
# 1. the store, built by real Nix (this part runs with the store at /nix)

def generate(a):
    rng = random.Random(a.seed)
    env = nix_env(a.conf)
    n, half = a.paths, a.paths // 2
    store = Path("/nix/store")
    stage = Path(a.stage)
    stage.mkdir(parents=True)
    used = set()

    def hashpart():
        while True:
            h = "".join(rng.choice(B32) for _ in range(32))
            if h not in used:
                used.add(h)
                return h

    # Nodes: (kind, live). A fifth added trees, a tenth .drv files, the rest outputs.
    n_add, n_drv = n // 5, n // 10
    add_live = [True] * (n_add // 2) + [False] * (n_add - n_add // 2)
    drv_live = [True] * (n_drv // 2) + [False] * (n_drv - n_drv // 2)

    # 1. nix-store --add: content-addressed leaves.
    dirs = []
    for i, live in enumerate(add_live):
        d = stage / f"gcb-add-{i}"
        (d / "share").mkdir(parents=True)
        (d / "data").write_text(f"added tree {i} {rng.random()}\n")
        (d / "share/LICENSE").write_text(LICENSES[i % 3])
        dirs.append(d)
    added = []
    for k in range(0, len(dirs), 500):
        o = subprocess.run(["nix-store", "--add", *dirs[k:k + 500]], env=env, check=True,
                           stdout=subprocess.PIPE).stdout.decode().split()
        added += o
    assert len(added) == len(dirs) == len(set(added)), "nix-store --add returned fewer paths"
    shutil.rmtree(stage)
    nodes = [{"path": p, "live": live, "refs": [], "deriver": "", "kind": "add"} for p, live in zip(added, add_live)]

    # 2. Crafted outputs and the .drv files that derive some of them, in a random order
    # of classes. An output's references are earlier outputs or added trees: a live
    # output's only live ones (the live half is closed), a dead one's either. A .drv (one
    # or two outputs of its class, so that a live output keeps its .drv under
    # keep-derivations) refers to its outputs' references (input sources) and to earlier
    # .drv files of its class (input derivations); its outputs' paths are the ones Nix
    # computes from it (hashDerivationModulo), which `--register-validity` checks.
    live_pool = [x["path"] for x in nodes if x["live"]]
    all_pool = [x["path"] for x in nodes]
    drvs, hashes = [], {}

    def pick_refs(live):
        pool = live_pool if live else all_pool
        k = min(len(pool), rng.choice([0, 1, 1, 2, 2, 3, 4, 6]))
        return sorted(set(rng.sample(pool, k))) if k else []

    def write_output(path, j, refs):
        body = f"output {j}\n" + "".join(f"{r}\n" for r in refs)
        if rng.random() < 0.2:
            Path(path).write_text(body)
        else:
            (Path(path) / "share/doc").mkdir(parents=True)
            (Path(path) / "data").write_text(body)
            (Path(path) / "share/doc/LICENSE").write_text(LICENSES[j % 3])
            if refs and rng.random() < 0.3:
                os.symlink(refs[0], Path(path) / "dep")

    remaining = {True: half - len(live_pool), False: n - half - (len(all_pool) - len(live_pool))}
    drv_left = {True: drv_live.count(True), False: drv_live.count(False)}
    j = 0
    while remaining[True] > 0 or remaining[False] > 0:
        live = rng.choice([c for c in (True, False) if remaining[c] > 0])
        r, d = remaining[live], drv_left[live]
        if d and r >= 2 and rng.random() < d * 2.5 / r:
            n_out = min(rng.choice([1, 1, 2]), r - 1)
            remaining[live] -= n_out + 1
            drv_left[live] -= 1
        else:
            n_out = 0
            remaining[live] -= 1
        if not n_out:
            path = f"/nix/store/{hashpart()}-gcb-out-{j}"
            refs = pick_refs(live) + ([path] if rng.random() < 0.1 else [])
            write_output(path, j, refs)
            nodes.append({"path": path, "live": live, "refs": sorted(set(refs)), "deriver": "", "kind": "out"})
            (live_pool if live else []).append(path)
            all_pool.append(path)
            j += 1
            continue
        k = len(drvs)
        name = f"gcb-drv-{k}"
        drv_path = f"/nix/store/{hashpart()}-{name}.drv"
        outnames = ["out", "dev"][:n_out]
        out_refs = {o: pick_refs(live) for o in outnames}
        earlier = [d for d in drvs if nodes[d]["live"]] if live else drvs
        inputs = sorted({nodes[d]["path"] for d in rng.sample(earlier, min(len(earlier), rng.choice([0, 1, 2, 3])))})
        srcs = sorted({r for rs in out_refs.values() for r in rs})
        env_ = {"name": name, "system": "x86_64-linux", "builder": "/bin/sh"}
        ins_h = {hashes[p]: ["out"] for p in inputs}
        masked = drv_aterm([(o, "") for o in outnames], ins_h, srcs, dict(env_, **{o: "" for o in outnames}))
        h = hashlib.sha256(masked.encode()).hexdigest()
        paths = {o: make_output_path(o, h, name) for o in outnames}
        env_.update(paths)
        outs = sorted(paths.items())
        hashes[drv_path] = hashlib.sha256(drv_aterm(outs, ins_h, srcs, env_).encode()).hexdigest()
        Path(drv_path).write_text(drv_aterm(outs, {p: ["out"] for p in inputs}, srcs, env_))
        for o in outnames:
            p = paths[o]
            refs = out_refs[o] + ([p] if rng.random() < 0.1 else [])
            write_output(p, j, refs)
            nodes.append({"path": p, "live": live, "refs": sorted(set(refs)), "deriver": drv_path, "kind": "out"})
            (live_pool if live else []).append(p)
            all_pool.append(p)
            j += 1
        nodes.append({"path": drv_path, "live": live, "refs": sorted(set(inputs) | set(srcs)), "deriver": "",
                      "kind": "drv"})
        drvs.append(len(nodes) - 1)
        # (.drv files are not in the pools: outputs do not refer to them)

    with open(a.stage + ".reg", "w") as f:
        for x in nodes:
            if x["kind"] == "add":
                continue
            f.write(f'{x["path"]}\n{x["deriver"]}\n{len(x["refs"])}\n' + "".join(r + "\n" for r in x["refs"]))
    with open(a.stage + ".reg") as f:
        subprocess.run(["nix-store", "--register-validity"], stdin=f, env=env, check=True)
    os.unlink(a.stage + ".reg")

    # 4. Roots: every live path no other live path reaches (references, and the deriver
    # link keep-derivations follows); a tenth of them indirect, two in a profile.
    by_path = {x["path"]: x for x in nodes}
    reached = set()
    for x in nodes:
        if x["live"]:
            reached |= {r for r in x["refs"] if r != x["path"]}
            if x["deriver"]:
                reached.add(x["deriver"])
    roots = [x["path"] for x in nodes if x["live"] and x["path"] not in reached]
    closure, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in closure:
            continue
        closure.add(p)
        todo += by_path[p]["refs"] + ([by_path[p]["deriver"]] if by_path[p]["deriver"] else [])
    assert closure == {x["path"] for x in nodes if x["live"]}, "the roots do not reach exactly the live half"
    gcroots = Path("/nix/var/nix/gcroots")
    (gcroots / "gcbench").mkdir(parents=True, exist_ok=True)
    (gcroots / "auto").mkdir(parents=True, exist_ok=True)
    results = Path("/nix/var/gcbench-results")
    results.mkdir(parents=True, exist_ok=True)
    profiles = Path("/nix/var/nix/profiles")
    profiles.mkdir(parents=True, exist_ok=True)
    for k, p in enumerate(roots):
        if k < 2:
            os.symlink(p, profiles / f"gcbench-{k + 1}-link")
        elif k % 10 == 0:
            os.symlink(p, results / f"r{k}")
            os.symlink(f"/nix/var/gcbench-results/r{k}", gcroots / "auto" / f"{hashpart()}")
        else:
            os.symlink(p, gcroots / "gcbench" / f"r{k}")
    os.symlink("gcbench-2-link", profiles / "gcbench")

    # 5. Unregistered leftovers (an interrupted build's output): garbage to both collectors.
    dead = [x["path"].rsplit("/", 1)[1] for x in nodes if not x["live"]]
    for k in range(a.leftovers):
        p = store / f"{hashpart()}-gcb-leftover-{k}"
        p.mkdir()
        (p / "data").write_text(f"leftover {k}\n")
        dead.append(p.name)

    subprocess.run(["nix-store", "--optimise"], env=env, check=True, stderr=subprocess.DEVNULL)
    Path(a.expect).write_text(json.dumps({
        "dead": sorted(dead), "live": len(closure), "roots": len(roots),
        "refs": sum(len(x["refs"]) for x in nodes), "drvs": len(drvs),
        "with_deriver": sum(1 for x in nodes if x["deriver"]), "added": len(added),
    }))


# ---------------------------------------------------------------------------------------
# 3. a synthetic store of many paths: the database filled directly

def generate_big(a):
    """DIR/nix (store at /nix while this runs: `nix-store --init` made the database)."""
    rng = random.Random(a.seed + 1)
    env = nix_env(a.conf)
    subprocess.run(["nix-store", "--init"], env=env, check=True)
    n = a.big
    store = Path("/nix/store")
    now = int(time.time()) - 30 * 86400
    seen = set()
    paths = []
    for i in range(n):
        while True:
            h = "".join(rng.choice(B32) for _ in range(32))
            if h not in seen:
                seen.add(h)
                break
        paths.append(f"/nix/store/{h}-gcr-{i}")
    db = sqlite3.connect("/nix/var/nix/db/db.sqlite")
    db.execute("PRAGMA journal_mode = DELETE")
    rows = []
    for i, p in enumerate(paths):
        body = f"path {i}\n"
        Path(p).write_text(body)
        rows.append((i + 1, p, "sha256:" + "%064x" % rng.getrandbits(256), now, None, 120, 0, None, None))
    db.executemany("INSERT INTO ValidPaths (id, path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) "
                   "VALUES (?,?,?,?,?,?,?,?,?)", rows)
    # Chains of 10 (each path refers to the one before it in its chain); the first half of
    # the chains live, rooted at their last path; a dead path refers to a live one at times.
    refs = []
    half = n // 2
    for i in range(n):
        if i % 10:
            refs.append((i + 1, i))
        if i >= half and rng.random() < 0.2:
            refs.append((i + 1, rng.randrange(half) + 1))
    db.executemany("INSERT INTO Refs (referrer, reference) VALUES (?,?)", refs)
    db.commit()
    db.close()
    gc = Path("/nix/var/nix/gcroots/gcbench")
    gc.mkdir(parents=True, exist_ok=True)
    for i in range(9, half, 10):
        os.symlink(paths[i], gc / f"r{i}")
    Path(a.expect).write_text(json.dumps({"dead": [p.rsplit("/", 1)[1] for p in paths[half:]], "refs": len(refs)}))


# ---------------------------------------------------------------------------------------

class Bench:
    def __init__(self, a):
        self.a = a
        self.bin = Path(a.bin).resolve()
        self.work = Path(a.workdir).resolve()
        self.conf = self.work / "conf"
        self.env = nix_env(self.conf)
        self.lines = []

    def setup(self):
        rm(self.work)
        self.conf.mkdir(parents=True)
        (self.conf / "nix.conf").write_text(NIX_CONF)

    def self_at_nix(self, root, *args):
        """This module, run with ROOT bind-mounted at /nix."""
        argv = [sys.executable, "-m", "bench.gc", "--bin", self.bin, "--workdir", self.work,
                "--seed", self.a.seed, "--conf", self.conf, *args]
        env = dict(os.environ, PYTHONPATH=str(REPO / "scripts"))
        subprocess.run(at_nix(root, argv), env=env, check=True)

    def nix_seed_gc(self, root, *args):
        return at_nix(root, [self.bin, "gc", "--target", "/nix", "--nix-conf", self.conf / "nix.conf",
                             "--progress", "none", *args])

    # -- 1 ------------------------------------------------------------------------------

    def store_phase(self):
        a = self.a
        gen = self.work / "gen/nix"
        gen.mkdir(parents=True)
        t0 = time.perf_counter()
        self.self_at_nix(gen, "--generate", "--stage", self.work / "stage", "--expect", self.work / "expect.json",
                         "--paths", a.paths, "--leftovers", a.leftovers)
        self.gen_secs = time.perf_counter() - t0
        exp = json.loads((self.work / "expect.json").read_text())
        names, valid, links = store_state(gen)
        log(f"store: {len(valid)} registered paths, {len(names)} entries, {links} .links entries, "
            f"{len(exp['dead'])} garbage, made in {self.gen_secs:.0f} s")
        n_refs = sqlite3.connect(f"file:{gen / 'var/nix/db/db.sqlite'}?mode=ro", uri=True).execute(
            "SELECT count(*) FROM Refs").fetchone()[0]
        n_do = sqlite3.connect(f"file:{gen / 'var/nix/db/db.sqlite'}?mode=ro", uri=True).execute(
            "SELECT count(*) FROM DerivationOutputs").fetchone()[0]
        files = sum(len(f) + len(d) for _, d, f in os.walk(gen / "store"))
        expected_left = names - set(exp["dead"])
        res = {"nix-seed": [], "nix": []}
        rss = {"nix-seed": [], "nix": []}
        outcome = {}
        agree = True
        for r in range(a.runs):
            order = ["nix-seed", "nix"] if r % 2 == 0 else ["nix", "nix-seed"]
            left = {}
            for c in order:
                dst = self.work / "round" / c / "nix"
                copy(gen, dst)
                run(["sync"])
                if c == "nix":
                    argv = at_nix(dst, ["nix-store", "--gc"])
                else:
                    argv = self.nix_seed_gc(dst, "--min-age", "0")
                wall, kib, text = timed(argv, env=self.env, log_path=self.work / f"gc-{c}-{r}.log")
                res[c].append(wall)
                rss[c].append(kib)
                outcome[c] = text.strip().splitlines()[-1] if text.strip() else ""
                left[c] = store_state(dst)
                log(f"round {r + 1}/{a.runs}: {c} {wall:.2f} s, {kib / 1024:.1f} MiB: {outcome[c]}")
            if left["nix"][:2] != left["nix-seed"][:2]:
                for what, k in (("store entries", 0), ("registrations", 1)):
                    only_n = left["nix"][k] - left["nix-seed"][k]
                    only_s = left["nix-seed"][k] - left["nix"][k]
                    if only_n or only_s:
                        log(f"{what}: kept by Nix only: {sorted(only_n)[:10]} ({len(only_n)}); "
                            f"kept by nix-seed only: {sorted(only_s)[:10]} ({len(only_s)})")
                sys.exit("gc bench: nix-seed gc and nix-store --gc did not delete the same paths")
            if left["nix"][0] != expected_left:
                agree = False
                log(f"both deleted the same, but not the generator's garbage: "
                    f"{len(names - left['nix'][0])} deleted, {len(exp['dead'])} expected")
            self.deleted = len(names - left["nix"][0])
            self.links = (links, left["nix"][2], left["nix-seed"][2])
        self.kept = self.work / "round/nix-seed/nix"  # for the GlusterFS phase
        rm(self.work / "round/nix")
        ratios = [n / s for n, s in zip(res["nix"], res["nix-seed"])]
        L = self.lines
        L += [f"### 1. {len(valid):,} paths, half garbage: `nix-seed gc` against `nix-store --gc`", "",
              f"The store, made by Nix {out(['nix-store', '--version']).split()[-1]} in {self.gen_secs:.0f} s: "
              f"{len(valid):,} registered paths ({exp['added']:,} `nix-store --add`ed trees, the rest "
              f"registered by `nix-store --register-validity`, {exp['drvs']:,} of them `.drv` files deriving "
              f"{exp['with_deriver']:,} outputs), {n_refs:,} references, {n_do:,} DerivationOutputs rows, "
              f"{files:,} files and directories, {links:,} `.links` entries after `nix-store --optimise`; "
              f"{exp['live']:,} live paths reached from {exp['roots']:,} roots (gcroots symlinks, a tenth "
              f"of them indirect through `gcroots/auto`, two profile generations), "
              f"{len(exp['dead']) - a.leftovers:,} garbage paths and {a.leftovers} unregistered "
              f"leftovers. Each round copies it twice (`cp -a`, then `sync`) and runs each collector on "
              f"its copy with the copy bind-mounted at /nix in a private mount namespace, "
              f"`use-sqlite-wal = false`; the order alternates. Backing filesystem: "
              f"{out(['stat', '-f', '-c', '%T', self.work]).strip()}.", "",
              "| | seconds (median) | each round | peak RSS (max) |", "|---|---:|---|---:|",
              f"| `nix-store --gc` | {med(res['nix']):.2f} | {' '.join(f'{x:.2f}' for x in res['nix'])} | "
              f"{max(rss['nix']) / 1024:.1f} MiB |",
              f"| `nix-seed gc --min-age 0` | {med(res['nix-seed']):.2f} | "
              f"{' '.join(f'{x:.2f}' for x in res['nix-seed'])} | {max(rss['nix-seed']) / 1024:.1f} MiB |",
              f"| ratio `nix-store --gc` / `nix-seed gc` | **{med(ratios):.2f}** (median of per-round ratios) | "
              f"{' '.join(f'{x:.2f}' for x in ratios)} | |", "",
              f"Both deleted the same {self.deleted:,} store entries in every round (store entries and "
              f"registrations compared after each pair; the benchmark fails otherwise)"
              + (", exactly the generator's garbage" if agree else ", but NOT exactly the generator's garbage")
              + f"; `.links` entries left: Nix {self.links[1]:,}, nix-seed {self.links[2]:,} (of {links:,}). "
              f"Last summaries: Nix `{outcome['nix']}`; nix-seed `{outcome['nix-seed']}`.", ""]
        if self.links[1] != self.links[2]:
            log(f"the collectors left different .links: Nix {self.links[1]}, nix-seed {self.links[2]}")

    # -- 2 ------------------------------------------------------------------------------

    def gcli(self, *args):
        sock = Path(self.netenv["NETFS_BASE"]) / "gluster/run/glusterd.socket"
        return out(["gluster", "--mode=script", f"--glusterd-sock={sock}", *args])

    def gluster_phase(self):
        a = self.a
        self.netenv = dict(l.split("=", 1) for l in out(["bash", NETFS, "up"]).splitlines() if "=" in l)
        base = Path(self.netenv["NETFS_BASE"])
        brick, mp = base / "bricks/gcbench", base / "mnt/gcbench"
        self.client_pid = None

        def teardown():
            self.umount(mp)
            try:
                self.gcli("volume", "profile", VOL, "stop")
            except Exception:
                pass
            for cmd in (["volume", "stop", VOL], ["volume", "delete", VOL]):
                try:
                    self.gcli(*cmd)
                except Exception:
                    pass
            shutil.rmtree(brick, ignore_errors=True)

        teardown()
        try:
            brick.mkdir(parents=True)
            mp.mkdir(parents=True, exist_ok=True)
            self.gcli("volume", "create", VOL, f"127.0.0.2:{brick}", "force")
            # An optimised store links one file from hundreds of paths; GlusterFS's brick
            # refuses that by default (ENOSPC): each link adds a gfid2path xattr to the inode
            # (ext4 has one block for them), and storage.max-hardlinks is 100.
            self.gcli("volume", "set", VOL, "storage.gfid2path", "off")
            self.gcli("volume", "set", VOL, "storage.max-hardlinks", "0")
            self.gcli("volume", "start", VOL)
            for _ in range(100):
                if "<status>1</status>" in self.gcli("volume", "status", VOL, "--xml"):
                    break
                time.sleep(0.1)
            self.mount(mp)
            t0 = time.perf_counter()
            run(["cp", "-a", self.kept, mp / "nix"])
            log(f"copied the collected store to GlusterFS in {time.perf_counter() - t0:.0f} s")
            tgt = mp / "nix"
            argv = [self.bin, "gc", "--target", tgt, "--min-age", "0", "--nix-conf", self.conf / "nix.conf",
                    "--progress", "none"]
            _, _, first = timed(argv)
            log(f"first run on GlusterFS: {first.strip().splitlines()[-1]}")
            self.gcli("volume", "profile", VOL, "start")
            warm, cold, wops, cops = [], [], [], []
            for r in range(a.gluster_runs):
                self.gcli("volume", "profile", VOL, "info", "clear")
                w, _, text = timed(argv)
                warm.append(w)
                wops.append(profile_ops(self.gcli("volume", "profile", VOL, "info", "cumulative")))
                if not re.search(r"\bdeleted 0 store paths\b", text):
                    log(f"warning: not a no-op: {text.strip()[-300:]}")
                self.umount(mp)
                self.mount(mp)
                self.gcli("volume", "profile", VOL, "info", "clear")
                c, _, _ = timed(argv)
                cold.append(c)
                cops.append(profile_ops(self.gcli("volume", "profile", VOL, "info", "cumulative")))
                log(f"GlusterFS no-op {r + 1}/{a.gluster_runs}: warm {w * 1000:.0f} ms, {round_trips(wops[-1])} "
                    f"round trips; cold client {c * 1000:.0f} ms, {round_trips(cops[-1])} round trips")
            self.gcli("volume", "profile", VOL, "stop")
            st = self.work / "noop.strace"
            timed(["strace", "-c", "-f", "-o", st] + argv)
            total, calls = strace_summary(st)
            entries = sum(len(f) + len(d) for _, d, f in os.walk(self.kept))
            n_paths = len([n for n in os.listdir(self.kept / "store") if not n.startswith(".")])
        finally:
            teardown()
        L = self.lines
        wmed = sorted(wops, key=round_trips)[len(wops) // 2]
        cmed = sorted(cops, key=round_trips)[len(cops) // 2]
        top = lambda ops: ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]) if v)
        L += [f"### 2. Nothing to delete, on GlusterFS", "",
              f"What nix-seed gc left of phase 1's store ({n_paths:,} live paths, {entries:,} files and directories), copied to a "
              f"GlusterFS volume of its own ({VOL}: one brick, GlusterFS defaults, on this machine: no "
              f"network delay; `storage.gfid2path off` and `storage.max-hardlinks 0`: with the "
              f"defaults the brick refuses the store's hardlinks, ENOSPC from about 100 links to one file), "
              f"FUSE-mounted once; `nix-seed gc --min-age 0` on it (nothing to delete). "
              f"Round trips = operations at the brick (`gluster volume profile {VOL} info cumulative`), all "
              f"but {', '.join(sorted(NOT_ROUND_TRIPS))}. Warm: after an earlier run through the same client; "
              f"cold client: the FUSE client just remounted (the brick's page cache stays warm). "
              f"{a.gluster_runs} runs each, medians.", "",
              "| | wall (median) | each run | round trips (median) | operations at the brick |",
              "|---|---:|---|---:|---|",
              f"| warm | {med(warm) * 1000:.0f} ms | {' '.join(f'{x * 1000:.0f}' for x in warm)} | "
              f"**{med([round_trips(o) for o in wops]):.0f}** | {top(wmed)} |",
              f"| cold client | {med(cold) * 1000:.0f} ms | {' '.join(f'{x * 1000:.0f}' for x in cold)} | "
              f"**{med([round_trips(o) for o in cops]):.0f}** | {top(cmed)} |", "",
              f"The client's syscalls, one warm run under `strace -c -f`: {total:,} "
              f"({', '.join(f'{k} {v}' for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:12])}).", ""]

    def mount(self, mp):
        pidf = self.work / "gcbench-client.pid"
        run(["glusterfs", "--volfile-server=127.0.0.2", f"--volfile-id={VOL}", "-l", self.work / "client.log",
             "-p", pidf, mp])
        for _ in range(100):
            if out(["stat", "-f", "-c", "%T", mp]).strip() == "fuseblk":
                break
            time.sleep(0.1)
        self.client_pid = int(pidf.read_text().strip())

    def umount(self, mp):
        if subprocess.run(["mountpoint", "-q", str(mp)]).returncode == 0:
            if subprocess.run(["umount", str(mp)]).returncode != 0:
                subprocess.run(["umount", "-l", str(mp)])
        if self.client_pid:
            for _ in range(50):
                try:
                    os.kill(self.client_pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(self.client_pid, 15)
            self.client_pid = None

    # -- 3 ------------------------------------------------------------------------------

    def rss_phase(self):
        a = self.a
        big = self.work / "big/nix"
        big.mkdir(parents=True)
        t0 = time.perf_counter()
        self.self_at_nix(big, "--generate-big", "--expect", self.work / "expect-big.json", "--big", a.big)
        log(f"synthetic store of {a.big:,} paths made in {time.perf_counter() - t0:.0f} s")
        exp = json.loads((self.work / "expect-big.json").read_text())
        names, valid, _ = store_state(big)
        expected_left = names - set(exp["dead"])
        res = {k: [] for k in ("seed-dry", "nix-dry", "seed", "nix")}
        for r in range(a.rss_runs):
            order = ["seed", "nix"] if r % 2 == 0 else ["nix", "seed"]
            real = order if a.big_nix_gc else ["seed"]
            for c in (order if r == 0 else ["seed"]):
                w, kib, text = timed(at_nix(big, ["nix-store", "--gc", "--print-dead"]) if c == "nix" else
                                     self.nix_seed_gc(big, "--min-age", "0", "--dry-run"), env=self.env)
                n = len([l for l in text.splitlines() if l.startswith("/nix/store/") or l.startswith("would delete /nix")])
                res[c + "-dry"].append((w, kib, n))
                log(f"RSS round {r + 1}: {c} dry run {w:.2f} s, {kib / 1024:.1f} MiB, {n} listed")
            for c in real:
                dst = self.work / "bigcopy/nix"
                copy(big, dst)
                run(["sync"])
                w, kib, text = timed(at_nix(dst, ["nix-store", "--gc"]) if c == "nix" else
                                     self.nix_seed_gc(dst, "--min-age", "0"), env=self.env)
                left = store_state(dst)[0]
                res[c].append((w, kib, len(names - left)))
                log(f"RSS round {r + 1}: {c} {w:.2f} s, {kib / 1024:.1f} MiB, {len(names - left)} deleted")
                if left != expected_left:
                    sys.exit(f"gc bench: {c} on the big store left {len(left)} entries, expected {len(expected_left)}")
        rm(self.work / "bigcopy")
        L = self.lines
        row = lambda k, label: (f"| {label} | {max(x[1] for x in res[k]) / 1024:.1f} MiB | "
                                f"{' '.join(f'{x[1] / 1024:.1f}' for x in res[k])} | {med([x[0] for x in res[k]]):.2f} s | "
                                f"{res[k][-1][2]:,} |")
        L += [f"### 3. Peak RSS, {len(valid):,} registered paths", "",
              f"A synthetic store: the database made by `nix-store --init` and filled with sqlite "
              f"({len(valid):,} ValidPaths rows, {exp['refs']:,} Refs rows: chains of 10, a fifth of the "
              f"dead paths also referring to a live one), one tiny file per path, {len(valid) // 20:,} gcroots "
              f"symlinks rooting the first half. Peak RSS by GNU time (`%M`), {a.rss_runs} rounds "
              f"(max and each), wall time median; real runs on a fresh `cp -a` copy each; "
              f"`nix-store --gc --print-dead` in the first round only (it takes minutes at this size).", "",
              "| | peak RSS (max) | each round (MiB) | seconds (median) | paths listed / deleted |",
              "|---|---:|---|---:|---:|",
              row("seed-dry", "`nix-seed gc --min-age 0 --dry-run`"),
              row("nix-dry", "`nix-store --gc --print-dead`"),
              row("seed", "`nix-seed gc --min-age 0`")]
        L += [row("nix", "`nix-store --gc`")] if a.big_nix_gc else []
        L += [""] if a.big_nix_gc else [
            "", "(`nix-store --gc` itself is left out at this size: it unregisters each path in a transaction of "
            "its own, 3 fsyncs each, so half an hour here; `--big-nix-gc` adds it.)", ""]

    def report(self, argv):
        head = [f"## Garbage collection", "",
                f"`scripts/bench.sh --gc{(' ' + argv) if argv else ''}` ({time.strftime('%Y-%m-%d', time.gmtime())}, "
                f"{os.cpu_count()} CPUs shared with other work, load {os.getloadavg()[0]:.2f} at the end; "
                f"nix-seed {out([self.bin, '--version']).split()[-1]}; took {self.took / 60:.0f} min).", ""]
        return "\n".join(head + self.lines).rstrip() + "\n"


def round_trips(ops):
    return sum(n for op, n in ops.items() if op not in NOT_ROUND_TRIPS)


def strace_summary(path):
    calls, total = {}, 0
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            calls[f[-1]] = int(f[3])
        elif f and f[-1] == "total":
            total = int(f[3])
    return total, calls


def into(path, section):
    s = Path(path).read_text()
    b, e = "<!-- gc:begin -->", "<!-- gc:end -->"
    block = f"{b}\n{section}{e}"
    s = s[:s.index(b)] + block + s[s.index(e) + len(e):] if b in s else s.rstrip("\n") + "\n\n" + block + "\n"
    Path(path).write_text(s)


def main():
    ap = argparse.ArgumentParser(prog="scripts/bench.sh --gc", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--argv", default="", help=argparse.SUPPRESS)
    ap.add_argument("--paths", type=int, default=10000, help="store paths of phase 1 (default 10000)")
    ap.add_argument("--leftovers", type=int, default=50, help="unregistered store entries (default 50)")
    ap.add_argument("--runs", type=int, default=3, help="rounds of phase 1 (default 3)")
    ap.add_argument("--gluster-runs", type=int, default=5, help="runs of phase 2, warm and cold each (default 5)")
    ap.add_argument("--big", type=int, default=100000, help="registered paths of phase 3 (default 100000)")
    ap.add_argument("--rss-runs", type=int, default=3, help="rounds of phase 3 (default 3)")
    ap.add_argument("--big-nix-gc", action="store_true", help="phase 3: also a real `nix-store --gc` (slow)")
    ap.add_argument("--skip", default="", help="comma-separated phases to leave out: gluster,rss")
    ap.add_argument("--seed", type=int, default=20, help="random seed of the generators (default 20)")
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "nix-seed-bench-gc"))
    ap.add_argument("--into", help="write the section into FILE between <!-- gc:begin --> and <!-- gc:end -->")
    ap.add_argument("--keep", action="store_true", help="leave the work directory")
    # Internal: the generators, run with the store bind-mounted at /nix.
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--generate-big", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--expect", help=argparse.SUPPRESS)
    ap.add_argument("--conf", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.generate:
        return generate(a)
    if a.generate_big:
        return generate_big(a)
    if os.geteuid() != 0:
        sys.exit("gc bench: must run as root (mount namespaces)")
    skip = set(filter(None, a.skip.split(",")))
    t0 = time.perf_counter()
    b = Bench(a)
    b.setup()
    try:
        b.store_phase()
        if "gluster" not in skip:
            b.gluster_phase()
        if "rss" not in skip:
            b.rss_phase()
    finally:
        if not a.keep:
            rm(b.work)
    b.took = time.perf_counter() - t0
    section = b.report(a.argv.strip())
    if a.into:
        into(a.into, section)
    print(section)


if __name__ == "__main__":
    main()
