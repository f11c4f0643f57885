"""`vrp bench train`: FLOP formula, comment-count expansion, report formatting and one tiny end-to-end run."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import bench_videos

from vrp.bench.config import BenchTrainConfig, bench_train_config
from vrp.bench.flops import FlopDims, executed_flops, useful_flops
from vrp.bench.train import expand_comments
from vrp.bench.train_report import append_section, format_table, markdown_section, summary_lines
from vrp.errors import ConfigError, VrpError
from vrp.files import write_jsonl_atomic

SEED_XLSX = Path(__file__).resolve().parents[2] / "shared" / "data" / "uos2023" / "train_dataset.xlsx"


def test_flop_formula_by_hand() -> None:
    d = FlopDims(n_layers=2, d_attn=4, n_body=100, n_head=50, n_lora=10)
    # per token 4*100 + 6*10 = 460; per scored pair 12*2*4 = 96; per LM-head position 4*50 = 200
    # useful, prompt 3 + comment 2: n = 5 tokens, causal pairs 5*6/2 = 15, head at the 2 comment tokens
    assert useful_flops(d, 3, 2) == 5 * 460 + 96 * 15 + 200 * 2 == 4140
    # executed, rows of 5 and 3 tokens padded to T = 5: 10 positions, 2*5*5 = 50 dense pairs, 2 head positions
    assert executed_flops(d, [5, 3], 2, dense_attention=True) == 10 * 460 + 96 * 50 + 400 == 9800
    assert executed_flops(d, [5, 5], 2, dense_attention=False) == 10 * 460 + 96 * 30 + 400 == 7880
    # split_sdpa with a causal prefix of 3: per row 3*4/2 causal pairs + (5 - 3) * 5 masked ones
    assert executed_flops(d, [5, 5], 2, True, causal_prefix=3) == 10 * 460 + 96 * 2 * 16 + 400 == 8072
    # the segment path: the pairs it scores (vrp.attention.scored_pairs) are given
    assert executed_flops(d, [5, 5], 2, True, causal_prefix=3, pairs=20) == 10 * 460 + 96 * 20 + 400 == 6920


def test_dims_from_tiny_lora_model(tokenizer) -> None:
    import torch
    from helpers import tiny_llama

    from vrp.adapter import attach_lora
    from vrp.bench.flops import dims_from_model
    from vrp.lora import LoraSettings
    from vrp.precision import Precision

    model = attach_lora(tiny_llama(tokenizer), LoraSettings(r=16), Precision("cpu", torch.float32, None))
    d = dims_from_model(model)
    # hidden 32, 4 heads of 8, 2 kv heads (k/v width 16), intermediate 64, 2 layers
    per_layer = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 3 * 32 * 64
    lora = 16 * ((32 + 32) * 2 + (32 + 16) * 2 + (32 + 64) * 3)        # r * (in + out) for q,o; k,v; gate,up,down
    assert d == FlopDims(n_layers=2, d_attn=32, n_body=2 * per_layer, n_head=32 * len(tokenizer), n_lora=2 * lora)


def test_expand_comments_deterministic_no_duplicates() -> None:
    vids = bench_videos()
    ex = expand_comments(vids, 10, 6)
    assert ex == expand_comments(vids, 10, 6)
    for i, v in enumerate(ex):
        texts = [c.text for c in v.comments]
        assert len(texts) == 10 and len(set(texts)) == 10
        assert texts[:3] == [c.text for c in vids[i].comments]          # own comments first
        assert [c.rank for c in v.comments] == list(range(1, 11))
        assert all(t.split()[0] != f"v{i}" for t in texts[3:])            # the rest from other videos
    assert [c.text for c in ex[1].comments][3:6] == ["v2 first", "v2 third", "v3 first"]   # 'shared' skipped
    assert [c.text for c in ex[5].comments][3:5] == ["v0 first", "v0 second"]              # wraps around
    assert [len(v.comments) for v in expand_comments(vids, 2, 3)] == [2, 2, 2]
    with pytest.raises(VrpError, match="distinct comments"):
        expand_comments(vids, 40, 1)


@pytest.mark.skipif(not SEED_XLSX.is_file(), reason="seed dataset not available")
def test_expand_real_comments() -> None:
    from vrp.sources import load_source

    videos, _ = load_source(SEED_XLSX)
    for v in expand_comments(videos, 30, 20):
        assert len({c.text.strip() for c in v.comments}) == 30


def _fake_bench(ks: tuple[int, ...] = (3, 30)) -> dict:
    results = []
    for k in ks:
        for kind, secs, rss in (("trl", 100.0, 1000), ("none", 50.0, 900),
                                ("shared_prefix", 10.0, 1000 * k)):
            results.append({"k": k, "kind": kind, "videos": 2, "comments": 10 * k, "steps_timed": 2, "seconds": secs,
                            "tokens": 1000 * k, "row_tokens_max": 1100, "row_tokens_mean": 1090, "peak_rss_bytes": rss * 2 ** 20,
                            "precision": "cpu-bfloat16", "executed_flops": 1e12, "useful_flops": 2e12})
    return {"options": {"comments_per_video": list(ks), "configs": ["trl", "none", "shared_prefix"],
                        "model": "m", "precision": "auto", "lora": {"r": 16, "alpha": 32, "dropout": 0.05,
                                                                   "target_modules": "all-linear"},
                        "batch_size": 4, "max_prompt_tokens": 1024, "max_comment_tokens": 128,
                        "max_row_tokens": 1536, "learning_rate": 2e-4, "data": "x.xlsx", "peak_size": 4096,
                        "peak_repeats": 5},
            "env": {"date": "2026-01-01 00:00 UTC", "cpu": "Test CPU", "cores": 2, "torch_threads": 2,
                    "python": "3.11", "torch": "t", "transformers": "tf", "trl": "trl", "peft": "p",
                    "load_start": [0.1, 0, 0], "load_end": [0.2, 0, 0], "wall_s": 1230.0},
            "peak_flops": {"bfloat16": 500e9, "float32": 200e9}, "results": results, "val": None}


def test_table_and_summary() -> None:
    b = _fake_bench()
    table = format_table(b)
    assert table.count("\n") == 2 + 6 - 1 and "| 3 | (c) vrp --packing shared_prefix |" in table
    # MFU = 1e12 FLOP / 100 s / 500e9 FLOP/s = 2%; useful 4%
    assert "| 1090/1100 | ? x 1100 | 1000 | 2.0% | 4.0% | 1.00x |" in table
    lines = summary_lines(b)
    assert "3 comments/video >= 8.0x: 10.00x (met)" in lines[0]
    assert "30 comments/video >= 25.0x: 10.00x (NOT met)" in lines[1]
    # (c) at 3 comments/video: 1e12 FLOP / 10 s / 500e9 FLOP/s
    assert "target: (c) executed MFU at 3 comments/video >= 45%: 20.0% (NOT met)" in lines[2]
    assert not any("load average" in x for x in lines)
    assert "run time: 20.5 minutes, model loads, matmul peak and validation check included" in lines
    assert lines[-1] == "comments/s ratio (c) shared_prefix / (a) TRL: 3/video 10.00x; 30/video 10.00x"
    md = markdown_section(b, "vrp bench train --quick")
    assert md.startswith("## vrp bench train (2026-01-01 00:00 UTC, Test CPU, 2 cores)")
    assert "Test CPU, 2 cores" in md and "`vrp bench train --quick`" in md and "bf16 500 GFLOP/s" in md


def test_per_step_median_spread_and_busy_machine() -> None:
    from vrp.bench.train_report import busy

    b = _fake_bench((3,))
    b["results"][2]["per_step"] = [{"seconds": s, "comments": c, "tokens": 100, "rows": 4, "row_tokens": t}
                                   for s, c, t in ((2.0, 10, 1200), (4.0, 10, 1536), (5.0, 20, 1100))]
    row = [x for x in format_table(b).splitlines() if "| (c) vrp" in x][0]
    # per-step comments/s 5, 2.5, 4 -> median 4, range 2.5-5; the largest step is 4 x 1,536
    assert "| 4.000 [2.500-5.000] |" in row and "| 4 x 1,536 |" in row
    assert busy(b) is None
    b["env"]["load_start"] = [2.5, 0, 0]
    assert "1-minute load average before the run was 2.50 on 2 cores" in busy(b)
    assert summary_lines(b)[-2].startswith("**The 1-minute load average") and summary_lines(b)[-2].endswith("**")


def test_busy_run_is_not_appended_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    import vrp.bench.train as bench_train
    from vrp.cli import main

    b = _fake_bench((3,))
    b["env"]["load_start"] = [3.0, 0, 0]
    monkeypatch.setattr(bench_train, "run_bench", lambda cfg, progress=True: b)
    out = tmp_path / "B.md"
    assert main(["bench", "train", "--data", "x.xlsx", "--output", str(out)]) == 1
    assert not out.exists() and "not appended to" in capsys.readouterr().err
    assert main(["bench", "train", "--data", "x.xlsx", "--output", str(out), "--write-when-busy"]) == 0
    assert "**The 1-minute load average before the run was 3.00 on 2 cores" in out.read_text()


@pytest.mark.parametrize("bench", ["train", "generate"])
def test_results_go_where_told_or_to_the_current_directory(bench: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --output a section goes to docs/benchmarks-history.md under the current directory when that exists,
    else to ./BENCHMARKS.md; --output is relative to the current directory; nothing lands in the package's tree."""
    import uuid

    import vrp
    import vrp.bench.generate as bench_generate
    import vrp.bench.train as bench_train
    from vrp.cli import main

    marker = {"cpu": f"cpu-{uuid.uuid4().hex}"}   # a heading no other run writes
    if bench == "train":
        def fake_train(cfg: object, progress: bool = True) -> dict:
            b = _fake_bench((3,))
            b["env"]["cpu"] = marker["cpu"]
            return b
        monkeypatch.setattr(bench_train, "run_bench", fake_train)
        argv = ["bench", "train", "--data", "x.xlsx"]
    else:
        monkeypatch.setattr(bench_generate, "run_bench", lambda cfg: {"cpu": marker["cpu"]})
        monkeypatch.setattr(bench_generate, "format_table", lambda b: "")
        monkeypatch.setattr(bench_generate, "busy", lambda b: None)
        monkeypatch.setattr(bench_generate, "markdown_section", lambda b, command: f"## run on {b['cpu']}\n")
        argv = ["bench", "generate", "--run", "some-run"]
    package_tree = Path(vrp.__file__).resolve().parents[2]    # the checkout's root in an editable install
    watched = [package_tree / "BENCHMARKS.md", package_tree / "docs" / "benchmarks-history.md",
               Path(vrp.__file__).resolve().parent / "BENCHMARKS.md"]
    monkeypatch.chdir(tmp_path)

    assert main(argv) == 0                                            # a plain directory: ./BENCHMARKS.md
    first = marker["cpu"]
    assert first in (tmp_path / "BENCHMARKS.md").read_text() and not (tmp_path / "docs").exists()

    (tmp_path / "docs").mkdir()                                       # a checkout: its history log
    (tmp_path / "docs" / "benchmarks-history.md").write_text("# Benchmark history\n\n## older\n")
    marker["cpu"] = f"cpu-{uuid.uuid4().hex}"
    assert main(argv) == 0
    history = (tmp_path / "docs" / "benchmarks-history.md").read_text()
    assert history.startswith("# Benchmark history\n\n## older\n\n## ") and marker["cpu"] in history
    assert marker["cpu"] not in (tmp_path / "BENCHMARKS.md").read_text()

    second = marker["cpu"]
    marker["cpu"] = f"cpu-{uuid.uuid4().hex}"
    assert main([*argv, "--output", "out/given.md"]) == 0             # relative to the current directory
    assert marker["cpu"] in (tmp_path / "out" / "given.md").read_text()
    for f in watched:
        text = f.read_text() if f.is_file() else ""
        assert not any(m in text for m in (first, second, marker["cpu"])), f


def test_append_section_keeps_old_text(tmp_path: Path) -> None:
    f = tmp_path / "BENCHMARKS.md"
    f.write_text("# Benchmarks\n\n## older\n\ntext\n")
    f.chmod(0o644)
    append_section(f, "## new\n\nbody\n")
    assert f.read_text() == "# Benchmarks\n\n## older\n\ntext\n\n## new\n\nbody\n"
    assert f.stat().st_mode & 0o777 == 0o644
    append_section(tmp_path / "fresh.md", "## a\n")
    assert (tmp_path / "fresh.md").read_text() == "# Benchmarks\n\n## a\n"


def test_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from helpers import one_line_error

    from vrp.cli import build_parser

    parse = build_parser().parse_args
    o = bench_train_config(None, vars(parse(["bench", "train", "--quick", "--comments-per-video", "3,10", "--configs",
                                             "none"])))
    assert o.quick and o.comments_per_video == [3, 10] and o.configs == ["none"] and o.batch_size == 2
    assert o.max_row_tokens == 2 * 256                                      # 2x the prompt budget
    assert BenchTrainConfig().max_row_tokens == 2048 and BenchTrainConfig().lora["r"] == 16
    (tmp_path / "b.yaml").write_text("quick: true\nbatch_size: 3\n")         # quick < YAML < flags
    o = bench_train_config(tmp_path / "b.yaml", vars(parse(["bench", "train", "--steps", "2"])))
    assert (o.batch_size, o.steps, o.max_prompt_tokens) == (3, 2, 256)
    with pytest.raises(ConfigError, match="comments_per_video: expected positive integers"):
        bench_train_config(None, vars(parse(["bench", "train", "--comments-per-video", "3,0"])))
    one_line_error(capsys, ["bench", "train", "--max-row-tokens", "100"],
                   "error: --max-row-tokens: (100) must exceed --max-prompt-tokens (1024)")
    one_line_error(capsys, ["bench", "train", "--configs", "trl,fast"], "error: --configs: choose from")
    # no --quick and no YAML: the error does not blame the quick preset
    one_line_error(capsys, ["bench", "train", "--comments-per-video", "0"],
                   "error: --comments-per-video: expected positive integers, got [0]")
    assert "quick preset" not in capsys.readouterr().err
    # the YAML `lora` mapping: completed from LoraSettings, checked as `vrp train` checks it, before any run
    (tmp_path / "l.yaml").write_text("lora: {r: 8}\n")
    assert bench_train_config(tmp_path / "l.yaml").lora == {"r": 8, "alpha": 32, "dropout": 0.0,
                                                             "target_modules": "all-linear"}
    for text, needle in (("lora: abc", "lora: expected a mapping"), ("lora: {foo: 1}", "lora: expected a mapping"),
                         ("lora: {r: 0}", "lora: must be >= 1"), ("lora: {dropout: 2}", "lora: must be in [0, 1)"),
                         ("lora: {r: x}", "lora: r and alpha must be integers"), ("val_videos: 0", "val_videos"),
                         ("learning_rate: -1", "learning_rate"), ("val_learning_rate: 0", "val_learning_rate")):
        (tmp_path / "bad.yaml").write_text(text + "\n")
        with pytest.raises(ConfigError, match=re.escape(needle)):
            bench_train_config(tmp_path / "bad.yaml")


@pytest.mark.slow
def test_bench_end_to_end_tiny(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """All three configurations (TRL with a few steps) and the validation check on a tiny random model, fp32."""
    from vrp.cli import main

    data = tmp_path / "videos.jsonl"
    write_jsonl_atomic(data, (v.to_json() for v in bench_videos()))
    out, raw = tmp_path / "BENCH.md", tmp_path / "raw.json"
    rc = main(["bench", "train", "--quick", "--model", str(tiny_model_dir), "--precision", "fp32", "--data", str(data),
               "--comments-per-video", "2", "--max-prompt-tokens", "64", "--peak-size", "128", "--threads", "1",
               "--output", str(out), "--json-out", str(raw), "--write-when-busy"])  # the test may share the CPU
    assert rc == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert stdout[-1].startswith("comments/s ratio (c) shared_prefix / (a) TRL: 2/video ")
    bench = json.loads(raw.read_text())
    by = {r["kind"]: r for r in bench["results"]}
    assert set(by) == {"trl", "none", "shared_prefix"}
    # --quick: >= 6 comments and 2 full batches of 2 shared-prefix rows (one video per row) -> 4 videos; every
    # configuration times its first 2 batches: 2 x 2 comments per example, 2 x 2 rows x 2 comments packed
    assert {r["videos"] for r in by.values()} == {4}
    assert all(r["steps_timed"] == 2 and len(r["per_step"]) == 2 for r in by.values())
    assert [by[k]["comments"] for k in ("trl", "none", "shared_prefix")] == [4, 4, 8]
    assert all(r["comments"] == sum(x["comments"] for x in r["per_step"]) for r in by.values())
    assert by["trl"]["useful_flops"] == pytest.approx(by["none"]["useful_flops"])   # the same 4 comments
    assert all(r["peak_rss_bytes"] > 50 * 2 ** 20 and r["seconds"] > 0 for r in by.values())
    v = bench["val"]
    assert v["none"]["comments_seen"] == v["shared_prefix"]["comments_seen"] == 4
    assert abs(v["none"]["final_val_nll"] - v["shared_prefix"]["final_val_nll"]) < 1e-4
    md = out.read_text()
    assert md.startswith("# Benchmarks") and "## vrp bench train (" in md and "| 2 | (a) TRL SFTTrainer" in md
    assert "command: `vrp bench train" in md


def test_trl_baseline_without_the_bench_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    import importlib.util

    from vrp.bench.train import run_bench

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    with pytest.raises(VrpError, match=r"needs trl: pip install 'vrp\[bench\]'"):
        run_bench(BenchTrainConfig(data=str(tmp_path / "none.xlsx"), configs=["trl", "none"]))
