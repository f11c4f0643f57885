"""`vrp bench serve`: a bounded loopback load check of the prediction server.

Knows: the options of the check (`BenchServeConfig`), how to start `vrp serve` in a subprocess on a free loopback
port (or take the `url` of a running one), how
to send N `POST /v1/predict` requests at concurrency C with httpx (each with a timeout, the whole run with a
deadline), and how to summarise them: latency percentiles (p50/p95, milliseconds, `numpy.percentile`'s linear
interpolation), counts by
HTTP status (or error kind), and the server's resident memory (VmRSS from /proc/<pid>/status, kB) at start-up,
after one warm-up request and after the load.
Does not know: how the server schedules work (see `vrp.serve.worker`).

Safety: only loopback targets (127.0.0.0/8, ::1, or `localhost` resolving to those) are accepted, so this cannot
be pointed at somebody else's server; the number of requests, the concurrency and the run time are bounded.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from vrp.bench.config import BenchServeConfig, require_loopback_url
from vrp.bench.train_report import cpu_model
from vrp.errors import VrpError


@dataclass
class LoadResult:
    """Summary of one load check. Latencies in milliseconds (all responses, and 200s only); RSS in kB (None when
    the server pid is unknown); rss_growth_pct compares after-load with after-warm-up."""

    url: str
    requests: int
    concurrency: int
    statuses: dict[str, int]
    wall_s: float
    p50_ms: float | None
    p95_ms: float | None
    p50_ok_ms: float | None
    p95_ok_ms: float | None
    requests_per_s: float
    server_pid: int | None = None
    rss_start_kb: int | None = None
    rss_before_kb: int | None = None
    rss_after_kb: int | None = None
    rss_growth_pct: float | None = None
    not_sent: int = 0
    payload: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return asdict(self)






def read_rss_kb(pid: int) -> int | None:
    """Resident set size of process `pid` in kB (VmRSS in /proc/<pid>/status), or None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) of `values` (`numpy.percentile`, linear interpolation between the closest
    ranks); None for no values."""
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _send_all(url: str, payload: dict[str, Any], n: int, concurrency: int, request_timeout_s: float,
                    deadline: float, progress: bool) -> tuple[Counter[str], list[tuple[str, float]], int]:
    import httpx

    statuses: Counter[str] = Counter()
    samples: list[tuple[str, float]] = []
    todo = iter(range(n))
    not_sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=request_timeout_s, limits=limits, trust_env=False) as client:
        async def one_worker() -> None:
            nonlocal not_sent
            for _ in todo:
                if time.monotonic() > deadline:
                    not_sent += 1
                    continue
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{url}/v1/predict", json=payload)
                    key = str(r.status_code)
                except httpx.TimeoutException:
                    key = "timeout"
                except httpx.HTTPError as e:
                    key = type(e).__name__
                statuses[key] += 1
                samples.append((key, (time.perf_counter() - t0) * 1000.0))
                if progress and (len(samples) % max(1, n // 10) == 0 or len(samples) == n):
                    print(f"  {len(samples)}/{n} done, statuses {dict(statuses)}", file=sys.stderr, flush=True)

        await asyncio.gather(*(one_worker() for _ in range(concurrency)))
    return statuses, samples, not_sent


def run_load(cfg: BenchServeConfig, url: str, server_pid: int | None = None, progress: bool = False) -> LoadResult:
    """Send `cfg.requests` predictions (`cfg.payload()`) at `cfg.concurrency` to the loopback server at `url` and
    summarise them.

    One warm-up request (not counted) runs first unless `cfg.warmup` is False. No request starts after
    `cfg.max_seconds`; those are counted in `not_sent`. `progress` prints a line to stderr per tenth of the
    requests. Raises ConfigError for a non-loopback url, VrpError when the warm-up request fails.
    """
    url = require_loopback_url(url)
    requests, concurrency, payload = cfg.requests, cfg.concurrency, cfg.payload()
    request_timeout_s, max_seconds, warmup = cfg.request_timeout_s, cfg.max_seconds, cfg.warmup
    rss_start = read_rss_kb(server_pid) if server_pid else None
    if warmup:
        import httpx

        with httpx.Client(timeout=request_timeout_s, trust_env=False) as c:
            try:
                r = c.post(f"{url}/v1/predict", json=payload)
            except httpx.HTTPError as e:  # nothing listening, a reset, a timeout
                raise VrpError(f"no answer from {url} ({type(e).__name__}: {e}); is `vrp serve` running "
                               f"there?") from None
            if r.status_code != 200:
                raise VrpError(f"warm-up request failed with HTTP {r.status_code}: {r.text[:300]}")
    rss_before = read_rss_kb(server_pid) if server_pid else None
    t0 = time.monotonic()
    statuses, samples, not_sent = asyncio.run(
        _send_all(url, payload, requests, concurrency, request_timeout_s, t0 + max_seconds, progress))
    wall = time.monotonic() - t0
    rss_after = read_rss_kb(server_pid) if server_pid else None
    all_ms = [ms for _, ms in samples]
    ok_ms = [ms for k, ms in samples if k == "200"]
    growth = (100.0 * (rss_after - rss_before) / rss_before) if rss_before and rss_after else None
    rnd = lambda v: None if v is None else round(v, 1)  # noqa: E731
    return LoadResult(url=url, requests=requests, concurrency=concurrency, statuses=dict(sorted(statuses.items())),
                      wall_s=round(wall, 2), p50_ms=rnd(percentile(all_ms, 50)), p95_ms=rnd(percentile(all_ms, 95)),
                      p50_ok_ms=rnd(percentile(ok_ms, 50)), p95_ok_ms=rnd(percentile(ok_ms, 95)),
                      requests_per_s=round(len(samples) / wall, 3) if wall > 0 else 0.0, server_pid=server_pid,
                      rss_start_kb=rss_start, rss_before_kb=rss_before, rss_after_kb=rss_after,
                      rss_growth_pct=None if growth is None else round(growth, 2), not_sent=not_sent,
                      payload={k: (v if k != "transcript" else f"<{len(v)} chars>") for k, v in payload.items()})


@contextlib.contextmanager
def started_server(model: str | None, run: str | None, checkpoint: str | None = None,
                   extra_args: list[str] | None = None, startup_timeout_s: float = 600.0) -> Iterator[tuple[str, int]]:
    """Start `python -m vrp serve` on 127.0.0.1:<free port>; yield `(url, pid)` once `/healthz` answers 200;
    stop it (SIGTERM, then SIGKILL after 10 s) on exit. Raises VrpError with the server log's tail if it exits
    or does not come up within `startup_timeout_s` seconds."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "vrp", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    cmd += (["--model", model] if model else []) + (["--run", run] if run else [])
    cmd += (["--checkpoint", checkpoint] if checkpoint else []) + list(extra_args or [])
    log = tempfile.NamedTemporaryFile(prefix="vrp-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def tail() -> str:
        log.flush()
        return Path(log.name).read_text(errors="replace")[-2000:]

    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise VrpError(f"the server exited with status {proc.returncode} during start-up:\n{tail()}")
            if time.monotonic() > deadline:
                raise VrpError(f"the server did not answer /healthz within {startup_timeout_s:g} s:\n{tail()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
        os.unlink(log.name)


def format_result(res: LoadResult) -> str:
    """A short plain-text report."""
    def mb(kb: int | None) -> str:
        return "n/a" if kb is None else f"{kb / 1024:.1f} MiB"
    lines = [f"target          {res.url}  ({res.requests} requests, concurrency {res.concurrency})",
             f"statuses        {', '.join(f'{k}: {v}' for k, v in res.statuses.items()) or 'none'}"
             + (f"  (not sent before the deadline: {res.not_sent})" if res.not_sent else ""),
             f"latency (all)   p50 {res.p50_ms} ms, p95 {res.p95_ms} ms",
             f"latency (200)   p50 {res.p50_ok_ms} ms, p95 {res.p95_ok_ms} ms",
             f"throughput      {res.requests_per_s} requests/s over {res.wall_s} s",
             f"server RSS      start {mb(res.rss_start_kb)}, after warm-up {mb(res.rss_before_kb)}, "
             f"after load {mb(res.rss_after_kb)}"
             + ("" if res.rss_growth_pct is None else f" (growth {res.rss_growth_pct:+.2f}% since warm-up)")]
    return "\n".join(lines)


def markdown_section(res: LoadResult, command: str, model: str) -> str:
    """A BENCHMARKS.md section: machine, date, command and numbers."""
    return (f"\n## vrp bench serve ({time.strftime('%Y-%m-%d')})\n\n"
            f"- machine: {cpu_model()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}\n"
            f"- model: {model}\n- command: `{command}`\n- request: {res.payload}\n\n"
            f"```\n{format_result(res)}\n```\n")
