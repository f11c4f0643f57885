"""`python -m vrp.bench.peak_run FILE ARGS...`: run the `vrp` command `ARGS` in this process and, when it exits,
write its peak resident set in bytes to FILE (to `FILE.<RANK>` in a process started by torchrun).

Why: a child's `ru_maxrss` (what `wait4` and `/usr/bin/time` report) also counts the memory of the parent it was
forked from, up to its `exec` (Linux keeps the larger of the two high-water marks), so a benchmark process that has
imported torch would see every command it starts as at least its own size. The high-water mark of the process's own
address space (`VmHWM`, `vrp.procmem.rss_high_water_bytes`) starts at `exec`. Used by `vrp.bench.data`.
"""
from __future__ import annotations

import atexit
import os
import runpy
import sys
from pathlib import Path

from vrp.procmem import rss_high_water_bytes


def main() -> None:
    """Run the command (`runpy`: the `vrp` entry point as `python -m vrp` runs it) and record the peak at exit."""
    if len(sys.argv) < 3:
        sys.exit("usage: python -m vrp.bench.peak_run FILE VRP-ARGS...")
    out, rank = sys.argv[1], os.environ.get("RANK")
    path = Path(f"{out}.{rank}" if rank is not None else out)
    atexit.register(lambda: path.write_text(str(rss_high_water_bytes())))
    sys.argv = ["vrp", *sys.argv[2:]]
    runpy.run_module("vrp", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
