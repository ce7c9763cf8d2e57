"""Running commands for the benchmark: logging, subprocesses, the measured command
(wait4: CPU and peak RSS), and the cleanup stack run on exit or interrupt."""

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]  # scripts/bench/common.py


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


def cpu_busy_seconds():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


RSS_FILE = None  # set by main (common.RSS_FILE = ...) before the first measure()


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
