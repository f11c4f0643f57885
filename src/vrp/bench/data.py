"""`vrp bench data`: how the cost of `vrp prepare` and of `vrp train`'s start-up grows with the number of videos.

Knows: synthetic data of realistic sizes (`write_table`: a JSONL table with one row per comment, as people export
them, each row repeating its video's title and transcript; transcripts of about 5,000 characters of Zipf-distributed
pseudo-words, 3-20 comments per video, Pareto-distributed like counts; the rows of a video adjacent), written into a
temporary directory; how each command is measured in its own process (`measure`: wall and CPU time, and peak RSS as
each process's own high-water mark, `vrp.bench.peak_run`, plus a sampled total over all processes for several
training processes): `vrp prepare` of the table; `vrp train --max-steps 1` (one row per batch, one
validation video, no learning-curve probes) started cold (it builds the dataset's token cache), again warm (it
reuses it), and warm in N processes with torchrun; start-up = seconds from the launch until the training loop opens
its `metrics.jsonl`, just before the first optimizer step, and RSS at start-up = the largest high-water mark of its
processes at that moment (the peak of the whole command also counts the optimizer step, whose memory depends on
the length of the first row drawn, not on the dataset); cache build = cold - warm start-up of one process; cache
size = bytes under `DATASET/.cache`. And how the growth is shown: per-video disk cost, and 10^6 videos extrapolated
as a fixed part plus a cost per video, from the two largest sizes that measured each quantity (`extrapolate`).
Does not know: how prepare or training work (it runs the `vrp` commands).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from vrp.bench.train_report import cpu_model
from vrp.errors import VrpError
from vrp.train.config import TrainConfig

EXTRAPOLATE_TO = 10 ** 6
POLL_S = 0.05


def write_table(path: Path, videos: int, min_comments: int = 3, max_comments: int = 20,
                transcript_chars: int = 5000, seed: int = 0) -> int:
    """Write a synthetic JSONL table of `videos` videos to `path` (see the module doc); returns the number of rows.
    Deterministic for a seed."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(5000)]
    cum = list(itertools.accumulate(1 / (r + 1) for r in range(len(vocab))))  # Zipf weights

    def words(n: int) -> str:
        return " ".join(rng.choices(vocab, cum_weights=cum, k=n))

    per_word = 1 + sum(len(w) / (r + 1) for r, w in enumerate(vocab)) / cum[-1]  # mean characters per word
    rows = 0
    with open(path, "w", encoding="utf-8") as f:
        for i in range(videos):
            head = (f'{{"video_id": "v{i:08d}", "title": {json.dumps(words(rng.randint(4, 12)))}, "transcript": '
                    f'{json.dumps(words(max(1, round(transcript_chars * rng.uniform(0.6, 1.4) / per_word))))}')
            for _ in range(rng.randint(min_comments, max_comments)):
                like = int(rng.paretovariate(1.2)) - 1
                f.write(f'{head}, "comment": {json.dumps(words(rng.randint(3, 30)))}, "like_count": {like}}}\n')
                rows += 1
    return rows


def du(path: Path) -> int:
    """Bytes of the files under `path` (0 when it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _tree(root: int) -> list[int]:
    """Process `root` and all its descendants (Linux /proc; [root] elsewhere)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    keep, frontier = {root}, [root]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier and p not in keep]
        keep.update(kids)
        frontier = kids
    return sorted(keep)


def _status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM) in bytes (0 when the process or field is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _tree_rss(root: int) -> int:
    """Resident bytes of process `root` and all its descendants now."""
    return sum(_status_kb(p, "VmRSS") for p in _tree(root))


def _tree_hwm(root: int) -> int:
    """The largest resident high-water mark (`VmHWM`, bytes) of process `root` and its descendants so far."""
    return max((_status_kb(p, "VmHWM") for p in _tree(root)), default=0)


def measure(args: list[str], env: dict[str, str], work: Path, name: str, timeout_s: float, nproc: int = 0,
            marker: Path | None = None) -> dict[str, Any]:
    """Run the `vrp` command `args` (with `nproc` >= 1, under torchrun in that many processes) through
    `vrp.bench.peak_run`, output to `work/<name>.log`, and return `wall_s`, `cpu_s` (user + system seconds of the
    process and its descendants), `peak_rss` (bytes: the largest peak resident set of the command's processes, their
    own `VmHWM`), `tree_rss` (the largest sampled sum of the resident sets of the process and its descendants, with
    `nproc`), and with `marker` the seconds until that file appeared (`marker_s`, None if never) and the largest
    high-water mark of the command's processes at that moment (`marker_rss`, bytes). Raises VrpError
    with the log's tail when the command fails or runs past `timeout_s`."""
    peak_file, log = work / f"{name}.peak", work / f"{name}.log"
    runner = ["-m", "vrp.bench.peak_run", str(peak_file), *args]
    cmd = ([sys.executable, *runner] if not nproc else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *runner])
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    marker_s, marker_rss, tree, last_sample = None, None, 0, 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        now = time.perf_counter() - t0
        if pid:
            break
        if marker is not None and marker_s is None and marker.exists():
            marker_s, marker_rss = now, _tree_hwm(proc.pid)
        if nproc and now - last_sample >= 0.2:
            tree, last_sample = max(tree, _tree_rss(proc.pid)), now
        if now > timeout_s:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise VrpError(f"vrp {args[0]}: ran past {timeout_s:.0f} s; see {log}")
        time.sleep(POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise VrpError(f"vrp {args[0]} failed (exit {proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
    peaks = [int(p.read_text()) for p in work.glob(f"{peak_file.name}*")]
    if not peaks:
        raise VrpError(f"vrp {args[0]}: no peak resident set was recorded in {peak_file}")
    return {"wall_s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss": max(peaks),
            "marker_s": marker_s, "marker_rss": marker_rss, "tree_rss": max(tree, sum(peaks)) if nproc else None}


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    env.setdefault("HF_HUB_OFFLINE", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def has_token_cache() -> bool:
    """True when `vrp train` reads a token cache (its `token_cache` option exists)."""
    return any(f.name == "token_cache" for f in fields(TrainConfig))


def _train(opts: Any, data: Path, run: Path, nproc: int, work: Path, name: str) -> dict[str, Any]:
    args = ["train", "--data", str(data), "--out", str(run), "--model", opts.model, "--max-steps", "1",
            "--batch-size", "1", "--max-prompt-tokens", str(opts.max_prompt_tokens), "--max-eval-videos", "1",
            "--curve-videos", "0", "--eval-every", "1000000", "--save-every", "1000000", "--seed", "0"]
    r = measure(args, _env(opts.threads), work, name, opts.timeout_s, nproc=nproc if nproc > 1 else 0,
                marker=run / "metrics.jsonl")
    if r["marker_s"] is None:
        raise VrpError(f"vrp train in {nproc} process(es) finished without opening {run / 'metrics.jsonl'}")
    return {"nproc": nproc, "startup_s": r["marker_s"], "startup_rss": r["marker_rss"], "wall_s": r["wall_s"],
            "cpu_s": r["cpu_s"], "peak_rss": r["peak_rss"], "tree_rss": r["tree_rss"]}


def measure_size(opts: Any, n: int, tmp: Path, say: Any) -> dict[str, Any]:
    """All measurements at `n` videos (see the module doc), in `tmp` (emptied afterwards)."""
    table, data = tmp / f"table-{n}.jsonl", tmp / f"data-{n}"
    t0 = time.perf_counter()
    rows = write_table(table, n, opts.min_comments, opts.max_comments, opts.transcript_chars, opts.seed)
    say(f"{n} videos: {rows} rows, {du(table) / 1e6:.0f} MB table written in {time.perf_counter() - t0:.0f} s; "
        f"vrp prepare ...")
    res: dict[str, Any] = {"videos": n, "rows": rows, "table_bytes": du(table)}
    p = measure(["prepare", str(table), "--out", str(data)], _env(1), tmp, f"prepare-{n}", opts.timeout_s)
    table.unlink()
    res.update(prepare_s=p["wall_s"], prepare_cpu_s=p["cpu_s"], prepare_rss=p["peak_rss"], dataset_bytes=du(data))
    say(f"    prepare {p['wall_s']:.1f} s, peak RSS {p['peak_rss'] / 2 ** 20:.0f} MiB")
    if opts.train and has_token_cache() and (not opts.train_max_videos or n <= opts.train_max_videos):
        runs = []
        for label, nproc in [("cold", 1)] + [("warm", k) for k in opts.processes]:
            say(f"    vrp train --max-steps 1, {nproc} process(es), token cache {label} ...")
            r = _train(opts, data, tmp / f"run-{n}-{label}-{nproc}", nproc, tmp, f"train-{n}-{label}-{nproc}")
            runs.append({"cache": label, **r})
            if label == "cold":
                res["cache_bytes"] = du(data / ".cache")
            say(f"        start-up {r['startup_s']:.1f} s, RSS at start-up {r['startup_rss'] / 2 ** 20:.0f} MiB, "
                f"peak RSS {r['peak_rss'] / 2 ** 20:.0f} MiB")
        res["train"] = runs
        warm = next((r for r in runs[1:] if r["nproc"] == 1), None)
        res["cache_build_s"] = runs[0]["startup_s"] - warm["startup_s"] if warm else None
    for p in tmp.iterdir():  # the next size needs the disk
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return res


def run_bench(opts: Any, progress: bool = True) -> dict[str, Any]:
    """Measure every size of `opts.videos` and return the raw results (JSON-ready): `options`, `env` (date, CPU,
    cores, RAM, load averages at start and end, whether `vrp train` has a token cache), `sizes` (one dict per
    size, `measure_size`) and `extrapolated` (`extrapolate`)."""
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    load_start, t_start = os.getloadavg(), time.perf_counter()
    if opts.train and not has_token_cache():
        say("note: this vrp has no token cache (`vrp train --token-cache`); measuring `vrp prepare` only")
    sizes = []
    with tempfile.TemporaryDirectory(prefix="vrp-bench-data-", dir=opts.work_dir) as tmp:
        for n in opts.videos:
            sizes.append(measure_size(opts, n, Path(tmp), say))
    env = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu_model(), "cores": os.cpu_count(),
           "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None,
           "load_start": load_start, "load_end": os.getloadavg(), "wall_s": time.perf_counter() - t_start,
           "python": sys.version.split()[0], "token_cache": has_token_cache()}
    return {"options": asdict(opts), "env": env, "sizes": sizes, "extrapolated": extrapolate(sizes)}


def extrapolate(sizes: list[dict[str, Any]], to: int = EXTRAPOLATE_TO) -> dict[str, Any] | None:
    """Each measured quantity at `to` videos, from the two largest sizes that measured it (n_a < n_b): a fixed part
    plus a cost per video, y(to) = y_b + (to - n_b) * (y_b - y_a) / (n_b - n_a) (the per-video cost is at least 0, so
    noise never extrapolates a decrease), the per-video cost itself (`<key>_per_video`) and the growth exponent
    log(y_b / y_a) / log(n_b / n_a) (`<key>_exponent`: 1 = linear, 0 = flat). Counts and disk sizes are per-video
    values of the largest size times `to`. `train` holds the same for each measured `vrp train` run. None when fewer
    than two sizes were measured or the largest is not below `to`."""
    if len(sizes) < 2 or sizes[-1]["videos"] >= to:
        return None
    out: dict[str, Any] = {"videos": to, "from": [sizes[-2]["videos"], sizes[-1]["videos"]]}

    def fit(points: list[tuple[int, float]], key: str, into: dict[str, Any]) -> None:
        if len(points) < 2:
            into[key] = into[f"{key}_per_video"] = into[f"{key}_exponent"] = None
            return
        (na, ya), (nb, yb) = points[-2:]
        per_video = max(0.0, (yb - ya) / (nb - na))
        into[key], into[f"{key}_per_video"] = yb + (to - nb) * per_video, per_video
        into[f"{key}_exponent"] = math.log(yb / ya) / math.log(nb / na) if ya > 0 and yb > 0 else None
        into[f"{key}_from"] = [na, nb]

    for key in ("prepare_s", "prepare_rss", "cache_build_s"):
        fit([(r["videos"], r[key]) for r in sizes if r.get(key)], key, out)
    for key in ("rows", "table_bytes", "dataset_bytes", "cache_bytes"):
        last = [r for r in sizes if r.get(key) is not None]
        if last:
            out[key] = last[-1][key] / last[-1]["videos"] * to
    runs = sorted({(t["cache"], t["nproc"]) for r in sizes for t in r.get("train") or []})
    for cache, nproc in runs:
        got = [(r["videos"], t) for r in sizes for t in r.get("train") or []
               if (t["cache"], t["nproc"]) == (cache, nproc)]
        row: dict[str, Any] = {"cache": cache, "nproc": nproc}
        fit([(n, t["startup_s"]) for n, t in got], "startup_s", row)
        fit([(n, t["peak_rss"]) for n, t in got], "peak_rss", row)
        fit([(n, t["startup_rss"]) for n, t in got if t.get("startup_rss")], "startup_rss", row)
        if row["startup_s"] is not None:
            out.setdefault("train", []).append(row)
    return out
