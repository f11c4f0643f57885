"""The memory profile of a training step (`vrp.bench.memory`) and `vrp bench train --memory`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vrp.adapter import attach_lora
from vrp.bench.memory import KINDS, format_profile, profile_step
from vrp.files import write_jsonl_atomic
from vrp.lora import LoraSettings
from vrp.packing import Row, collate
from vrp.precision import Precision
from vrp.records import Comment, Video

BF16 = Precision("cpu", torch.bfloat16, torch.bfloat16)


def _profile(tokenizer, lean: bool) -> dict:
    from helpers import tiny_llama

    model = tiny_llama(tokenizer, hidden_size=64, intermediate_size=128).to(torch.bfloat16)
    model = attach_lora(model, LoraSettings(r=4, dropout=0.1), BF16, lean=lean)
    batch = collate([Row(list(range(10, 200)), [[5, 6, 7, 2], [8, 9, 2]])] * 2, 2, "shared_prefix")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    return profile_step(model, batch, BF16, opt)


def test_profile_breaks_the_step_down(tokenizer) -> None:
    old, new = _profile(tokenizer, lean=False), _profile(tokenizer, lean=True)
    for p in (old, new):
        assert (p["rows"], p["row_tokens"], p["tokens"], p["targets"], p["layers"]) == (2, 197, 394, 14, 2)
        assert p["saved_total"] == sum(p["saved"].values()) > 0 and set(p["saved"]) == set(KINDS)
        assert sum(sum(x.values()) for x in p["saved_per_layer"]) <= p["saved_total"]
        # LoRA r=4 on 7 linears of 2 layers: r x (in + out) fp32 weights each
        assert p["lora_weights"] == 4 * 4 * 2 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 2 + (128 + 64))
        assert p["lora_grads"] == p["lora_weights"] and p["optimizer_state"] == 2 * p["lora_weights"]
        assert p["weights"] > 49152 * 64 * 2          # the (tied) embedding in bf16 at least
        assert p["step_peak"] >= p["saved_total"] and p["peak_rss"] >= p["rss_before"] > 0
    assert old["saved"]["LoRA dropout copies"] > 0 and new["saved"]["LoRA dropout copies"] == 0
    assert new["saved_total"] < 0.6 * old["saved_total"]
    per_layer = old["saved_per_layer"][0]
    assert per_layer["attention"] > 0 and per_layer["MLP"] > 0 and per_layer["norms"] > 0
    table = format_profile(new, "(c)")
    assert table.startswith("(c): 2 rows x 197 tokens (14 targets), 2 decoder layers")
    assert "| saved: MLP |" in table and "| AdamW state |" in table and "LoRA dropout copies" not in table


def test_memory_rows_have_one_shape_for_every_configuration(tokenizer) -> None:
    from vrp.bench.config import BenchTrainConfig
    from vrp.bench.train import memory_rows

    opts = BenchTrainConfig(data="x", comments_per_video=[3], batch_size=3, memory_row_tokens=400,
                            max_prompt_tokens=64)
    videos = _videos(4)
    shapes = {}
    for mode in ("trl", "none", "shared_prefix"):
        rows = memory_rows(videos, tokenizer, opts, mode)
        shapes[mode] = [len(r["prompt_ids"]) + sum(map(len, r["completions"])) for r in rows]
        assert [len(r["completions"]) for r in rows] == [3 if mode == "shared_prefix" else 1] * 3
    assert shapes == {m: [400] * 3 for m in shapes}
    with pytest.raises(Exception, match="memory_row_tokens: 5 tokens leave no room"):
        memory_rows(videos, tokenizer, BenchTrainConfig(data="x", memory_row_tokens=5, max_prompt_tokens=64),
                    "shared_prefix")


def _videos(n: int) -> list[Video]:
    return [Video(f"vid{i}", f"Video {i}", " ".join(f"word{i}_{j}" for j in range(300)),
                  [Comment(f"v{i} comment {k}") for k in range(3)]) for i in range(n)]


@pytest.mark.slow
def test_bench_memory_end_to_end_tiny(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vrp.cli import main

    data = tmp_path / "videos.jsonl"
    write_jsonl_atomic(data, (v.to_json() for v in _videos(6)))
    out, raw = tmp_path / "BENCH.md", tmp_path / "raw.json"
    rc = main(["bench", "train", "--memory", "--quick", "--model", str(tiny_model_dir), "--precision", "fp32",
               "--data", str(data), "--max-prompt-tokens", "64", "--memory-row-tokens", "120", "--threads", "1",
               "--peak-size", "256", "--output", str(out), "--json-out", str(raw)])
    assert rc == 0
    bench = json.loads(raw.read_text())
    by = {r["mode"]: r for r in bench["memory"]}
    assert set(by) == {"trl", "none", "shared_prefix"} and not any("error" in r for r in by.values())
    assert {(r["rows"], r["row_tokens"]) for r in by.values()} == {(2, 120)}
    assert by["none"]["profile"]["targets"] < by["shared_prefix"]["profile"]["targets"]
    assert all(r["peak_rss_bytes"] > 50 * 2 ** 20 for r in by.values())
    md = out.read_text()
    assert "## vrp bench train --memory (" in md and "| (a) TRL SFTTrainer, per example | 2 x 120 |" in md
    assert "(c) vrp --packing shared_prefix: 2 rows x 120 tokens" in md and "| saved: attention |" in md
    assert "## vrp bench train --memory" in capsys.readouterr().out
    # the time profile of (b) and (c): equal rows of 120 tokens, so (b) runs the causal kernel on 2 x 120*121/2
    # pairs; (c)'s mask is causal only up to its second comment, the rest is scored against all 120 keys
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    per_pair = 12 * cfg["num_hidden_layers"] * cfg["hidden_size"]
    assert "time" not in by["trl"]
    assert by["none"]["time"]["attention_flops"] == per_pair * 2 * 120 * 121 / 2
    assert by["shared_prefix"]["time"]["attention_flops"] > by["none"]["time"]["attention_flops"]
    for mode in ("none", "shared_prefix"):
        t = by[mode]["time"]
        assert t["seconds"]["attention kernel"] > 0 and t["seconds"]["matmul"] > 0 and t["other_flops"] > 0
        assert t["step_seconds"] > 0 and t["profiled_seconds"] > 0
    assert md.count("| attention kernel |") == 2 and "Where the time of one step goes" in md


def test_op_kinds() -> None:
    from vrp.bench.optime import op_kind

    assert op_kind("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention kernel"
    assert op_kind("aten::mm") == op_kind("aten::addmm") == "matmul"
    assert op_kind("aten::_log_softmax_backward_data") == "loss"
    assert op_kind("aten::_fused_adamw_") == op_kind("aten::_foreach_norm") == "optimizer"
    assert op_kind("aten::mul") == op_kind("aten::copy_") == "elementwise and copies"
    assert op_kind("autograd::engine::evaluate_function: MmBackward0") == "Python and autograd"


def test_time_profile_table() -> None:
    from vrp.bench.optime import KINDS, format_time_profile

    p = {"step_seconds": 2.0, "profiled_seconds": 2.2, "attention_flops": 2e11,
         "other_flops": 8e11, "seconds": dict(zip(KINDS, [1.0, 0.5, 0.1, 0.0, 0.3, 0.1]))}
    table = format_time_profile(p, "(c)", peak=1e12)
    assert table.startswith("(c): step 2.00 s (2.20 s under the profiler); model FLOPs 1.00 T, of which attention 20%")
    assert "| attention kernel | 1.00 | 50% | 200 | 200 | 20% |" in table
    assert "| matmul | 0.50 | 25% | 800 | 1,600 | 160% |" in table
