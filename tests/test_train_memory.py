"""Memory budgets (`vrp.train.memory`, `max_memory`): sizes, the micro-batch plan, the startup measurement, training
under a budget (same loss as the unconstrained run with accumulation), the clear errors, the reported peak."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import one_line_error, tiny_llama, tiny_train_config, write_splits

from vrp.errors import ConfigError
from vrp.records import Comment, Video
from vrp.train import memory
from vrp.train.config import TrainConfig
from vrp.train.loop import train

EOS = 2


def test_parse_size_and_budget_values() -> None:
    assert memory.parse_size("8GB") == 8 * 10 ** 9
    assert memory.parse_size("7.5 GiB") == int(7.5 * 2 ** 30)
    assert memory.parse_size("512mb") == 512 * 10 ** 6 and memory.parse_size("1000 B") == 1000
    for bad in ("lots", "8 GB RAM", "-1GB", "0B", "GB"):
        with pytest.raises(ValueError, match="not a size"):
            memory.parse_size(bad)
    assert memory.resolve_budget("", "cpu") is None and memory.resolve_budget("2GB", "cpu") == 2 * 10 ** 9
    auto = memory.resolve_budget("auto", "cpu")
    assert memory.resident_bytes() < auto <= memory.resident_bytes() + memory.available_ram_bytes()
    with pytest.raises(ConfigError, match="max_memory: not a size: 'lots'") as e:
        TrainConfig(max_memory="lots")
    assert e.value.field == "max_memory"


def test_plan_micro_batch_picks_the_most_rows_that_divide_and_fit() -> None:
    gb = 10 ** 9
    assert memory.plan_micro_batch(10 * gb, 1 * gb, 2 * gb, 1100, 4).micro_rows == 4    # 9 GB
    p = memory.plan_micro_batch(8 * gb, 1 * gb, 2 * gb, 1100, 4)    # 4 rows: 9 GB; 3 rows do not divide 4
    assert (p.micro_rows, p.splits, p.predicted_peak) == (2, 2, 5 * gb)
    assert "2 row(s) per micro-batch x 6 accumulation step(s) (global batch 12 rows)" in p.describe(3)
    assert memory.plan_micro_batch(4 * gb, 1 * gb, 2 * gb, 1100, 6).micro_rows == 1
    with pytest.raises(ConfigError, match=r"max_memory: 2.50 GB cannot fit one row of 1100 tokens: that needs about "
                                          r"3.00 GB") as e:
        memory.plan_micro_batch(int(2.5 * gb), 1 * gb, 2 * gb, 1100, 4)
    assert "`max_row_tokens`" in e.value.message and "`gradient_checkpointing`" in e.value.message
    # the heap slack is paid once, not per row: 1 fixed + 3 slack + 4 x 2 = 12 GB > 10 GB; with 2 rows 8 GB fit
    p = memory.plan_micro_batch(10 * gb, 1 * gb, 2 * gb, 1100, 4, slack=3 * gb)
    assert (p.micro_rows, p.predicted_peak, p.to_json()["slack_bytes"]) == (2, 8 * gb, 3 * gb)
    assert "= 1.00 GB fixed + 3.00 GB heap slack + 2 x 2.00 GB per row" in p.describe(1)
    with pytest.raises(ConfigError, match=r"that needs about 6.00 GB \(1.00 GB for the model and optimizer \+ 2.00 GB "
                                          r"for the row \+ 3.00 GB of heap slack\)"):
        memory.plan_micro_batch(int(5.5 * gb), 1 * gb, 2 * gb, 1100, 4, slack=3 * gb)


def test_allocated_peak_counts_the_tensors_of_a_step() -> None:
    def step() -> None:
        a = torch.ones(2 ** 21)            # 8 MiB
        b = a * 2                          # 16 MiB live here
        del a, b
        torch.ones(2 ** 20)                # 4 MiB after the others are freed

    peak = memory.allocated_peak(step, "cpu")
    assert 16 * 2 ** 20 <= peak < 17 * 2 ** 20


def test_measure_row_bytes_grows_with_the_row_and_leaves_no_trace(tokenizer) -> None:

    from vrp.adapter import attach_lora
    from vrp.lora import LoraSettings
    from vrp.packing import Row
    from vrp.precision import Precision

    prec = Precision("cpu", torch.float32, None)
    model = attach_lora(tiny_llama(tokenizer), LoraSettings(r=4, dropout=0.1), prec).eval()
    short, long = Row(list(range(3, 40)), [[5, 6, EOS]]), Row(list(range(3, 400)), [[5, 6, EOS]])
    state = torch.random.get_rng_state()
    a = memory.measure_row_bytes(model, short, EOS, "none", prec)
    assert torch.equal(torch.random.get_rng_state(), state)       # the run's randomness is untouched
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert memory.measure_row_bytes(model, short, EOS, "none", prec) == pytest.approx(a, rel=0.02)  # repeatable
    assert memory.measure_row_bytes(model, long, EOS, "none", prec) > 1.3 * a   # 10x the tokens (the head is fixed)


def _dataset(path: Path) -> Path:
    texts = ["great video", "i love this song", "first!", "so helpful thanks", "what camera is this", "nice"]
    train_v = [Video(f"v{i}", f"title {i}", f"transcript number {i} " * (3 + i), [Comment(c), Comment(c + " 2")])
               for i, c in enumerate(texts)]
    val = [Video("w", "t", "held out " * 5, [Comment("cool")])]
    write_splits(path, train_v, val)
    return path


def _cfg(model_dir: Path, **kw) -> TrainConfig:
    return tiny_train_config(model_dir, **{**dict(batch_size=4, max_steps=3, eval_every=3, save_every=3, packing="none"), **kw})


@pytest.mark.slow
def test_budget_cuts_micro_batches_and_reaches_the_same_loss(tmp_path: Path, tiny_model_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget for 2 of the 4 rows of a micro-batch: micro-batches of 2 with twice the accumulation, the same
    losses and adapter as the unconstrained run (the fixed part and the row cost are pinned: the test process's
    resident set is not this test's to control)."""
    from safetensors.torch import load_file

    data = _dataset(tmp_path / "data")
    free = train(_cfg(tiny_model_dir), data, tmp_path / "free", progress=False)
    monkeypatch.setattr(memory, "in_use_bytes", lambda device: 10 ** 9)
    monkeypatch.setattr(memory, "measure_row_bytes", lambda *a: 10 ** 8)
    calls = []
    from vrp.train import loop

    real_step = loop._step
    monkeypatch.setattr(loop, "_step", lambda s, micro, state: calls.append(
        [len(b) for b in micro]) or real_step(s, micro, state))
    # fixed 1 GB + heap slack 2.8 x 0.1 GB + rows x 0.1 GB: 2 rows 1.48 GB fit, 4 rows (1.68 GB) do not
    budget = train(_cfg(tiny_model_dir, max_memory="1.55GB"), data, tmp_path / "budget", progress=False)
    plan = budget["memory_plan"]
    assert (plan["micro_rows"], plan["splits"], plan["budget_bytes"]) == (2, 2, 1_550_000_000)
    assert calls == [[4]] * 3                  # the same configured micro-batches reach the step ...
    assert budget["comments_seen"] == free["comments_seen"] == 12
    got, want = ([h["loss"] for h in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
                  if "loss" in h] for run in ("budget", "free"))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6) and len(got) == 3
    assert budget["final_val_nll"] == pytest.approx(free["final_val_nll"], rel=1e-5)
    a = load_file(tmp_path / "budget" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "free" / "adapter" / "adapter_model.safetensors")
    # Adam divides by sqrt(v): float differences of 1e-7 in a gradient reach ~1e-5 in a weight; a step of lr 1e-2
    # moves every weight by ~1e-2, so a different gradient would show
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in b)
    metrics = json.loads((tmp_path / "budget" / "metrics.json").read_text())
    assert metrics["peak_rss_bytes"] > 10 ** 8
    assert metrics["memory_plan"]["predicted_peak_bytes"] == pytest.approx(1.48e9, rel=1e-3)
    assert free["memory_plan"] is None and free["peak_rss_bytes"] > 10 ** 8


@pytest.mark.slow
def test_split_step_really_runs_smaller_micro_batches(tmp_path: Path, tiny_model_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import vrp.train.distributed

    monkeypatch.setattr(memory, "in_use_bytes", lambda device: 10 ** 9)
    monkeypatch.setattr(memory, "measure_row_bytes", lambda *a: 10 ** 8)
    rows_seen = []
    real = vrp.train.distributed.loss_sum  # the training step's forward (`vrp.train.distributed`)
    monkeypatch.setattr(vrp.train.distributed, "loss_sum",
                        lambda m, b: rows_seen.append(b["input_ids"].shape[0]) or real(m, b))
    train(_cfg(tiny_model_dir, max_memory="1.45GB", eval_every=100), _dataset(tmp_path / "data"),
          tmp_path / "run", progress=False)
    training = rows_seen[:12]  # 3 steps x 4 micro-batches of one row (validation runs after the last step)
    assert training == [1] * 12


def test_budget_that_cannot_fit_is_a_clear_error_before_anything_is_written(tmp_path: Path,
                                                                             tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"max_memory: 1 MB cannot fit one row of \d+ tokens") as e:
        train(_cfg(tiny_model_dir, max_memory="1MB"), _dataset(tmp_path / "data"), tmp_path / "run", progress=False)
    assert e.value.field == "max_memory" and not (tmp_path / "run").exists()


def test_out_of_memory_becomes_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"max_memory: out of memory in a micro-batch of 4 row\(s\) x 1536 tokens; "
                                          r"set a budget") as e:
        with memory.out_of_memory_as_config_error(4, 1536, ""):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes")
    assert "`batch_size`" in e.value.message and "`gradient_checkpointing`" in e.value.message
    with pytest.raises(ConfigError, match="the budget 8GB was more than this machine could give"):
        with memory.out_of_memory_as_config_error(2, 100, "8GB"):
            raise MemoryError()
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with memory.out_of_memory_as_config_error(2, 100, ""):
            raise RuntimeError("shape mismatch")


def test_cli_names_the_flag(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    one_line_error(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--max-memory", "lots"],
                   "error: --max-memory: not a size: 'lots'")


def test_freed_memory_is_given_back_every_step_under_a_budget_else_every_eighth() -> None:
    assert [s for s in range(1, 25) if memory.trim_after_step(s, False)] == [8, 16, 24]
    assert all(memory.trim_after_step(s, True) for s in range(1, 25))
    assert memory.release_freed_memory() is sys.platform.startswith("linux")   # glibc's malloc_trim


def test_a_budget_needs_a_unit_and_one_above_the_machine_is_warned(capsys) -> None:
    for bare in ("512", " 8 ", "1.5"):
        with pytest.raises(ConfigError, match=rf"^max_memory: needs a unit, e.g. 512MB or 8GB, got '{bare.strip()}'$"):
            TrainConfig(max_memory=bare)
    with pytest.raises(ConfigError, match=r"^max_memory: not a size: '9999.*' is too large$"):
        TrainConfig(max_memory="9" * 320 + "TB")     # float('9' * 320) is inf: no OverflowError traceback
    with pytest.raises(ConfigError, match="too large"):
        TrainConfig(max_memory="20000000000GB")      # 2e19 bytes > 2^63
    total, what = memory.total_memory_bytes("cpu")
    assert what == "RAM" and total > 10 ** 8
    assert memory.resolve_budget("1MB", "cpu") == 10 ** 6 and capsys.readouterr().err == ""
    assert (memory.fmt_bytes(1000), memory.fmt_bytes(2.5e6), memory.fmt_bytes(3.421e9)) == ("1 kB", "2 MB", "3.42 GB")
    assert memory.resolve_budget("1000TB", "cpu") == 10 ** 15
    err = capsys.readouterr().err
    assert f"warning: the memory budget 1000000.0 GB is more than the {memory.fmt_bytes(total)} of RAM" in err, err


def test_allocated_peak_measures_without_profiler_lines_on_stderr(capfd: pytest.CaptureFixture) -> None:
    """The CPU measurement runs torch's profiler, whose C++ side prints `profiler_start` / `profiler_stop` lines on
    file descriptor 2; they are silenced, while what the measured function prints to stderr still shows."""
    def step() -> None:
        x = torch.ones(1 << 20)  # 4 MiB
        print("from the step", file=sys.stderr, flush=True)
        del x

    assert memory.allocated_peak(step, "cpu") >= 1 << 22
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "profiler_stop" not in err and "from the step" in err


@pytest.mark.slow
def test_a_run_past_its_budget_says_so_at_the_end(tmp_path: Path, tiny_model_dir: Path, monkeypatch, capsys) -> None:
    """A plan that fits on paper (the fixed part and the row cost pinned at 1 MB) under a 20 MB budget that the
    process's resident set is far above: the run ends with one warning line and `memory_budget_exceeded`; a budget
    the run keeps gives neither."""
    data = _dataset(tmp_path / "data")
    monkeypatch.setattr(memory, "in_use_bytes", lambda device: 10 ** 6)
    monkeypatch.setattr(memory, "measure_row_bytes", lambda *a: 10 ** 6)
    over = train(_cfg(tiny_model_dir, max_memory="20MB"), data, tmp_path / "over", progress=False)
    err = capsys.readouterr().err
    warned = [ln for ln in err.splitlines() if ln.startswith("warning: the run's peak memory")]
    assert len(warned) == 1 and "(RSS) went past max_memory 20 MB by" in warned[0], err
    assert "the plan predicted" in warned[0] and "set a lower max_memory" in warned[0]
    saved = json.loads((tmp_path / "over" / "metrics.json").read_text())
    assert saved["memory_budget_exceeded"] is True and over["memory_budget_exceeded"] is True
    assert saved["memory_over_budget_bytes"] == saved["peak_rss_bytes"] - 20 * 10 ** 6 > 0
    kept = train(_cfg(tiny_model_dir, max_memory="20GB"), data, tmp_path / "kept", progress=False)
    assert "peak memory" not in capsys.readouterr().err
    assert (kept["memory_budget_exceeded"], kept["memory_over_budget_bytes"]) == (False, 0)
    free = train(_cfg(tiny_model_dir), data, tmp_path / "free", progress=False)
    assert free["memory_budget_exceeded"] is None  # no budget, nothing to keep


def test_the_plan_models_gradient_checkpointing(monkeypatch, capsys) -> None:
    """The terms of the plan with `gradient_checkpointing`, on the numbers of a measured SmolLM2-135M run
    (`--gradient-checkpointing --packing none --tiers`, 384-token rows, 2026-12-07): 850 MB fixed, a checkpointed row
    of 100 MB, a measured peak RSS of 1.418 GB with one row per micro-batch. The slack of an unchecked plan (2.8 row
    costs) predicted 1.23 GB; the checkpointed slack covers the measured peak."""
    from types import SimpleNamespace

    from vrp.precision import Precision

    mb = 10 ** 6
    monkeypatch.setattr(memory, "in_use_bytes", lambda device: 850 * mb)
    monkeypatch.setattr(memory, "measure_row_bytes", lambda *a: 100 * mb)
    monkeypatch.setattr(memory, "loading_peak", lambda device: 0)
    model, rows = torch.nn.Linear(2, 2, bias=False), [SimpleNamespace(num_tokens=384)]
    model.weight.requires_grad_(False)  # no trainable bytes: the fixed part is exactly the pinned 850 MB
    prec = Precision("cpu", torch.float32, None)

    def plan(gc: bool, budget: str = "3GB") -> memory.MemoryPlan:
        return memory.plan_memory(model, rows, 0, TrainConfig(max_memory=budget, gradient_checkpointing=gc,
                                                              batch_size=1), prec)

    with_gc, without = plan(True), plan(False)
    assert without.slack == int(memory.HEAP_SLACK_ROWS * 100 * mb) and without.predicted_peak < 1.418e9
    assert with_gc.slack == int(memory.HEAP_SLACK_ROWS_CHECKPOINTED * 100 * mb) == 550 * mb
    assert with_gc.predicted_peak == 1500 * mb > 1.418e9  # the measured peak is inside the plan
    with pytest.raises(ConfigError, match=r"max_memory: 1.15 GB cannot fit one row of 384 tokens: that needs about "
                                          r"1.50 GB") as e:
        plan(True, "1.15GB")  # the budget: refused at the start instead of a 1.39 GB run
    assert "gradient_checkpointing" not in e.value.message  # already on: not suggested again
    monkeypatch.setattr(memory, "loading_peak", lambda device: 1273 * mb)
    capsys.readouterr()
    plan(True)
    assert "warning: loading the model already reached 1.27 GB, more than max_memory" not in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^max_memory: 1.20 GB cannot fit one row of 384 tokens: that needs about "
                                          r"1.50 GB"):
        plan(True, "1.2GB")
    assert "warning: loading the model already reached 1.27 GB, more than max_memory 1.20 GB" in capsys.readouterr().err
