"""One process of the distributed tests, started by torchrun: `torchrun --nproc-per-node 2 dist_worker.py SPEC`.

SPEC is a JSON list of runs, done in order; each is `{"cfg": TrainConfig kwargs, "data": dir, "out": run dir,
"resume": bool, "kill_at": step or null}`, `{"argv": [...], "out": run dir}` for the command line `vrp ARGV`, or
`{"copy": run dir, "out": run dir}`: rank 0 copies a run dir (a killed run, to be resumed twice). Every run goes
through `vrp.train.loop.train`, which finds the launch in the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT) and creates the gloo process group (later runs join it). `kill_at` raises in every
process after that step (and its checkpoint), as a kill would stop the job there. Rank 0 appends one line per run to
SPEC + '.done' (the test checks that all of them ran).
"""
from __future__ import annotations

import json
import os
import shutil
import sys


class Killed(Exception):
    """Raised after step `kill_at`."""


def main(spec_path: str) -> int:
    import torch

    torch.set_num_threads(1)
    from vrp.cli import main as vrp_main
    from vrp.train.config import TrainConfig
    from vrp.train.loop import train

    with open(spec_path) as f:
        jobs = json.load(f)
    for job in jobs:
        if "copy" in job:
            if os.environ["RANK"] == "0":
                shutil.copytree(job["copy"], job["out"])
            _done(spec_path, job["out"])
            continue
        if "argv" in job:
            rc = vrp_main(job["argv"])
            if rc != 0:
                raise SystemExit(f"vrp {' '.join(job['argv'])}: exit status {rc}")
            _done(spec_path, job["out"])
            continue

        def kill(step: int, at: int | None = job.get("kill_at")) -> None:
            if step == at:
                raise Killed

        try:
            train(TrainConfig(**job["cfg"]), job["data"], job["out"], resume=job.get("resume", False),
                  on_step=kill, progress=False)
        except Killed:
            pass
        _done(spec_path, job["out"])
    return 0


def _done(spec_path: str, out: str) -> None:
    if os.environ["RANK"] == "0":
        with open(spec_path + ".done", "a") as f:
            f.write(out + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
