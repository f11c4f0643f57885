"""`vrp bench serve` (`vrp.bench.serve`): loopback-only targets, latency percentiles, a load run against a live
`vrp serve` app with a fake generator, and the one-line error when nothing listens."""
from __future__ import annotations

import json
import os
import re

import pytest
from helpers import INFO, Recorder, live_server, one_line_error, tiny_llama

from vrp.bench.config import require_loopback_url
from vrp.bench.serve import free_port, percentile
from vrp.cli import main
from vrp.errors import ConfigError
from vrp.serve.app import create_app
from vrp.serve.config import ServeConfig


def test_bench_refuses_non_loopback_targets_and_computes_percentiles():
    for bad, why in [("http://10.1.2.3:8000", "10.1.2.3 is not a loopback address"),
                     ("http://example.com:80", "only loopback targets are allowed (127.0.0.1, ::1, localhost), got "
                                               "'example.com'"),
                     ("https://127.0.0.1:8000", "expected http://127.0.0.1:PORT, got 'https://127.0.0.1:8000'"),
                     ("ftp://localhost", "expected http://127.0.0.1:PORT, got 'ftp://localhost'")]:
        with pytest.raises(ConfigError, match="^url: " + re.escape(why)):
            require_loopback_url(bad)
    assert require_loopback_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert require_loopback_url("http://localhost:9") == "http://localhost:9"
    assert percentile([], 50) is None and percentile([5.0], 95) == 5.0
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile(list(range(101)), 95) == pytest.approx(95.0)


def test_bench_serve_against_a_live_server(tokenizer, tmp_path, capsys):
    rec = Recorder()  # a fake generator: only the HTTP side is measured
    config = ServeConfig(default_max_new_tokens=4, max_new_tokens=32, queue_size=0)
    app = create_app(config, (tiny_llama(tokenizer), tokenizer, INFO), None, generate_fn=rec)
    with live_server(app) as url:
        out = tmp_path / "bench.json"
        md = tmp_path / "BENCHMARKS.md"
        md.write_text("# Benchmarks\n\nolder section\n")
        rc = main(["bench", "serve", "--url", url, "--server-pid", str(os.getpid()), "--requests", "12",
                   "--concurrency", "3", "--max-new-tokens", "8", "--json-out", str(out), "--append-md", str(md)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert sum(res["statuses"].values()) == 12 and set(res["statuses"]) <= {"200", "503"}
    assert res["statuses"].get("200", 0) >= 1 and len(rec.prompts) == res["statuses"]["200"] + 1  # + warm-up
    assert res["p50_ms"] > 0 and res["p95_ms"] >= res["p50_ms"] and res["rss_after_kb"] > 0
    assert md.read_text().startswith("# Benchmarks\n\nolder section\n") and "## vrp bench serve" in md.read_text()
    assert "latency (all)" in capsys.readouterr().out
    assert main(["bench", "serve", "--url", "http://192.0.2.1:8000"]) == 2
    assert "not a loopback address" in capsys.readouterr().err


def test_bench_serve_without_a_server_is_a_one_line_error(capsys):
    """Nothing listening at --url: the warm-up request's connection error becomes one `error:` line (exit 2)."""
    one_line_error(capsys, ["bench", "serve", "--url", f"http://127.0.0.1:{free_port()}", "--requests", "1"],
                   "no answer from http://127.0.0.1:", "is `vrp serve` running there?")
