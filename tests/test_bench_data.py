"""`vrp bench data` (`vrp.bench.data`, `vrp.bench.data_report`): the synthetic tables, the extrapolation of the
measured growth, the peak-RSS measurement of a command, and the command writing its section where it is told."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from vrp.bench.data import extrapolate, measure, write_table
from vrp.bench.data_report import format_table, growth_lines


def test_synthetic_table_has_the_asked_shape_and_is_deterministic(tmp_path: Path) -> None:
    rows = write_table(tmp_path / "a.jsonl", 40, min_comments=3, max_comments=20, transcript_chars=5000, seed=1)
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert rows == len(lines)
    per_video = Counter(r["video_id"] for r in lines)
    assert len(per_video) == 40 and min(per_video.values()) >= 3 and max(per_video.values()) <= 20
    transcripts = {r["video_id"]: r["transcript"] for r in lines}
    mean = sum(map(len, transcripts.values())) / 40
    assert 4000 < mean < 6000, mean
    assert all(set(r) == {"video_id", "title", "transcript", "comment", "like_count"} for r in lines)
    write_table(tmp_path / "b.jsonl", 40, seed=1)
    write_table(tmp_path / "c.jsonl", 40, seed=2)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()


def _size(n: int, seconds: float, rss: float, startup: float) -> dict:
    return {"videos": n, "rows": 11 * n, "table_bytes": 60_000 * n, "prepare_s": seconds, "prepare_cpu_s": seconds,
            "prepare_rss": rss, "dataset_bytes": 7_000 * n, "cache_bytes": 4_000 * n, "cache_build_s": n / 100,
            "train": [{"cache": "cold", "nproc": 1, "startup_s": startup + n / 100, "peak_rss": 2e9,
                       "tree_rss": 2e9},
                      {"cache": "warm", "nproc": 1, "startup_s": startup, "peak_rss": 2e9, "tree_rss": 2e9}]}


def test_extrapolation_follows_the_measured_growth() -> None:
    sizes = [_size(1000, 2.0, 100e6, 20.0), _size(10_000, 20.0, 100e6, 20.0), _size(100_000, 380.0, 190e6, 20.0)]
    del sizes[2]["train"]  # `vrp train` measured at the two smaller sizes only
    x = extrapolate(sizes)
    assert x["from"] == [10_000, 100_000]
    # a fixed part plus the cost per video between the two largest sizes: (380 - 20) s / 90,000 videos = 4 ms
    assert x["prepare_s_per_video"] == pytest.approx(0.004) and x["prepare_s"] == pytest.approx(380 + 0.004 * 900_000)
    assert x["prepare_rss_per_video"] == pytest.approx(1000) and x["prepare_rss"] == pytest.approx(190e6 + 900e6)
    assert x["prepare_s_exponent"] == pytest.approx(1.2788, abs=1e-4)   # log10(380 / 20)
    assert x["dataset_bytes"] == 7_000 * 10 ** 6 and x["rows"] == 11 * 10 ** 6
    assert x["cache_bytes"] == 4_000 * 10 ** 6
    cold, warm = x["train"]  # from 1,000 and 10,000 videos, the largest sizes that ran it
    assert (cold["cache"], warm["cache"], warm["startup_s_from"]) == ("cold", "warm", [1000, 10_000])
    assert cold["startup_s"] == pytest.approx(120 + 0.01 * 990_000) and warm["startup_s"] == pytest.approx(20.0)
    assert warm["startup_s_exponent"] == pytest.approx(0.0) and warm["peak_rss_per_video"] == 0
    assert extrapolate(sizes[:1]) is None and extrapolate([_size(10 ** 5, 1, 1, 1), _size(10 ** 6, 2, 1, 1)]) is None
    noisy = extrapolate([_size(1000, 5.0, 100e6, 20.0), _size(2000, 4.0, 90e6, 20.0)])
    assert noisy["prepare_s"] == 4.0 and noisy["prepare_rss"] == 90e6  # a measured decrease is not extrapolated
    bench = {"options": {"processes": [1]}, "sizes": sizes, "extrapolated": x}
    table = format_table(bench).splitlines()
    assert len(table) == 2 + 3 + 1 and table[-1].startswith("| **10^6** (extrapolated) | ~11,000,000 | ~60.0 GB")
    assert "| 100,000 | 1,100,000 | 6.0 GB | 380 s (CPU 380 s) | 181 MiB | 700.0 MB (7.0 kB/video) |" in table[4]
    assert table[-1].endswith("| ~10,020 s, 1,907 MiB | ~20.0 s, 1,907 MiB |")
    lines = growth_lines(bench)
    assert lines[0] == ("From 10,000 to 100,000 videos (10x): `vrp prepare` time x19.00 (rows x10.00), peak RSS "
                        "x1.90.")
    assert "Target: peak RSS of `vrp prepare` at most 2x from 10^4 to 10^5 videos: x1.90, met." in lines
    assert lines[-1] == ("Target: a warm `vrp train` reaches its first step at 10^5 videos in under 30 s: not "
                         "measured at 10^5 videos.")


@pytest.mark.slow
def test_measure_reports_the_command_s_own_peak_not_the_parent_s(tmp_path: Path) -> None:
    import os

    import torch  # noqa: F401  (this process is large; its forked children must not be measured as large)

    write_table(tmp_path / "t.jsonl", 5, seed=0)
    r = measure(["prepare", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "ds")], dict(os.environ),
                tmp_path, "p", 300)
    assert (tmp_path / "ds" / "manifest.json").is_file() and r["wall_s"] > 0 and r["cpu_s"] > 0
    assert 30 * 2 ** 20 < r["peak_rss"] < 400 * 2 ** 20, r["peak_rss"]     # pandas, not torch
    from vrp.errors import VrpError

    with pytest.raises(VrpError, match=r"vrp prepare failed \(exit 2\):\n.*missing\.jsonl: file not found"):
        measure(["prepare", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")], dict(os.environ),
                tmp_path, "q", 300)


@pytest.mark.slow
def test_bench_data_writes_its_section_where_told(tmp_path: Path, monkeypatch, capsys) -> None:
    from vrp.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results.md"
    assert main(["bench", "data", "--videos", "4,8", "--no-train", "--write-when-busy", "--output", str(out),
                 "--json-out", str(tmp_path / "r.json"), "--work-dir", str(tmp_path)]) == 0
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\n## vrp bench data (") and "`vrp bench data" in text
    assert "| 8 | " in text and "**10^6** (extrapolated)" in text and "`vrp train` not timed" in text
    raw = json.loads((tmp_path / "r.json").read_text())
    assert [s["videos"] for s in raw["sizes"]] == [4, 8] and all(s["prepare_rss"] > 0 for s in raw["sizes"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "results.md"]  # the temporary data is gone
