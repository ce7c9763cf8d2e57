"""The nix-seed benchmark, run by scripts/bench.sh as `python3 -m bench` (PYTHONPATH=scripts).

* `__main__`: the command line and the order of the phases.
* `common`: running commands, the measured command (wait4), the cleanup stack.
* `fs`: filesystem setup (loop-device ext4, private GlusterFS, overlays).
* `run`: workloads, contenders and the phases.
* `report`: BENCHMARKS.md and --report-from.
"""
