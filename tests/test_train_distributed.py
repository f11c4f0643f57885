"""Training in 2 processes (torchrun, gloo on the CPU, a tiny random Llama) against one process: the same adapter
after the same optimizer steps, for shared-prefix and `none` packing, 5 training videos (not divisible by 2, so
the last step of an epoch and the validation are uneven), kill-and-resume under 2 ranks, resume across world sizes
(2 -> 1 and 1 -> 2 processes), FSDP, and the launcher environment.

One torchrun job (`dist_worker.py`) runs all 2-process runs in order (starting processes dominates the time); the
one-process references run in this process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import bench_videos, write_splits

from vrp.errors import ConfigError, VrpError
from vrp.files import write_jsonl_atomic
from vrp.records import Comment, Video
from vrp.train.config import TrainConfig
from vrp.train.loop import train

TEXTS = ["great video", "i love this song so much", "first!", "so helpful thanks a lot", "what camera is this",
         "lol", "this deserves more views honestly", "cool", "ok"]
COUNTS = [1, 2, 3, 1, 2]  # comments per training video: rows of 1-3 comments, 9 comments in all


def write_data(path: Path) -> None:
    """5 training videos with 1-3 comments and transcripts of different lengths, 3 validation videos."""
    videos, k = [], 0
    for i, n in enumerate(COUNTS):
        videos.append(Video(f"v{i}", f"title {i}", f"transcript number {i} " * (3 + 2 * i),
                            [Comment(TEXTS[(k + j) % len(TEXTS)]) for j in range(n)]))
        k += n
    val = [Video(f"val{i}", "t", f"held out {i} " * (4 + i), [Comment("nice one"), Comment("cool stuff")][:1 + i % 2])
           for i in range(3)]
    write_splits(path, videos, val)


def base_cfg(model_dir: Path, **kw: Any) -> dict[str, Any]:
    """One row per micro-batch, 5 steps: with 2 micro-batches per step an epoch is 3 steps (2, 2, 1 rows)."""
    cfg = dict(model=str(model_dir), precision="fp32", max_prompt_tokens=64, max_row_tokens=256, lora_r=8,
               lora_alpha=16, lora_dropout=0.0, learning_rate=1e-2, batch_size=1, grad_accum=1, max_steps=5,
               eval_every=2, save_every=2, warmup_steps=1, lr_scheduler="constant_with_warmup", seed=0,
               curve_videos=0)
    cfg.update(kw)
    return cfg


class Killed(Exception):
    pass


def run_one(cfg: dict[str, Any], data: Path, out: Path, resume: bool = False, kill_at: int | None = None) -> None:
    """A one-process run (`kill_at`: stop after that step, as a kill would)."""
    def kill(step: int) -> None:
        if step == kill_at:
            raise Killed

    try:
        train(TrainConfig(**cfg), data, out, resume=resume, on_step=kill, progress=False)
    except Killed:
        pass


def adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def max_diff(a: Path, b: Path) -> float:
    x, y = adapter(a), adapter(b)
    assert x.keys() == y.keys() and x
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def metrics(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """Every run of this module, by name: one-process references first, then one torchrun job of 2 processes, then
    a one-process resume of a 2-process run."""
    root = tmp_path_factory.mktemp("dist")
    data = root / "data"
    write_data(data)
    r = {name: root / name for name in ("ref_sp", "ref_none", "x1", "ddp_sp", "ddp_none", "c_full", "c_kill",
                                        "fsdp", "e1", "spec.json")}
    sp, none = base_cfg(tiny_model_dir), base_cfg(tiny_model_dir, packing="none", batch_size=2, max_steps=4)
    run_one(dict(sp, grad_accum=2), data, r["ref_sp"])
    run_one(dict(none, grad_accum=2), data, r["ref_none"])
    run_one(dict(sp, grad_accum=2), data, r["x1"], kill_at=3)  # resumed below by 2 processes
    drop = dict(sp, lora_dropout=0.1)
    jobs = [
        {"cfg": sp, "out": r["ddp_sp"]},
        {"cfg": none, "out": r["ddp_none"]},
        {"cfg": drop, "out": r["c_full"]},
        {"cfg": drop, "out": r["c_kill"], "kill_at": 3},
        {"cfg": drop, "out": r["c_kill"], "resume": True},
        {"cfg": dict(sp, distributed_strategy="fsdp"), "out": r["fsdp"], "kill_at": 3},
        {"copy": str(r["fsdp"]), "out": r["e1"]},  # the killed FSDP run, resumed below in one process
        {"cfg": dict(sp, distributed_strategy="fsdp"), "out": r["fsdp"], "resume": True},
        {"argv": ["train", "--data", str(data), "--out", str(r["x1"]), "--resume", "--grad-accum", "1"],
         "out": r["x1"]},  # the CLI under torchrun: 1 -> 2 processes, the global batch kept
    ]
    r["spec.json"].write_text(json.dumps([dict(j, data=str(data), out=str(j["out"])) for j in jobs]))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(Path(__file__).with_name("dist_worker.py")), str(r["spec.json"])],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    done = Path(str(r["spec.json"]) + ".done")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert done.read_text().split() == [str(j["out"]) for j in jobs]
    r["cli_out"] = root / "cli.out"
    r["cli_out"].write_text(proc.stdout)
    run_one(dict(sp, grad_accum=2), data, r["e1"], resume=True)  # 2 -> 1 process, the global batch kept
    return r


@pytest.mark.distributed
def test_two_ranks_equal_one_process_with_accumulation(runs: dict[str, Path]) -> None:
    """2 ranks x 1 row = 1 process x 1 row x 2 accumulation steps: the same adapter, validation NLL and counts, with
    shared-prefix rows (1-3 comments of different lengths) and with packing none; the epoch's last step has one
    micro-batch (rank 1 runs a weight-0 call) and the 3 validation videos split 2 + 1."""
    for two, one in (("ddp_sp", "ref_sp"), ("ddp_none", "ref_none")):
        assert max_diff(runs[two], runs[one]) <= 1e-5, two
        m2, m1 = metrics(runs[two]), metrics(runs[one])
        assert m2["world_size"] == 2 and m2["distributed_strategy"] == "ddp" and m1["world_size"] == 1
        assert m2["steps"] == m1["steps"] and m2["comments_seen"] == m1["comments_seen"] > 9  # past one epoch
        assert m2["tokens_seen"] == m1["tokens_seen"]
        assert m2["final_val_nll"] == pytest.approx(m1["final_val_nll"], abs=1e-6)
        assert m2["final_val_nll"] < m2["base_val_nll"] - 0.01  # it trained
    # only rank 0 wrote: one metrics.jsonl line per step (plus the step-0 validation), one TensorBoard file
    lines = (runs["ddp_sp"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1, 2, 3, 4, 5]
    assert len(list((runs["ddp_sp"] / "logs").iterdir())) == 1
    state = json.loads((runs["ddp_sp"] / "checkpoints" / "step-000005" / "state.json").read_text())
    assert state["data_position"] == {"epoch": 1, "micro_batch": 4, "batch_size": 1}  # 3 steps (5 rows), then 2


@pytest.mark.distributed
def test_kill_and_resume_under_two_ranks_equals_uninterrupted(runs: dict[str, Path]) -> None:
    """With LoRA dropout on, so that each rank's restored RNG state matters: killed after step 3 (checkpoint at
    step 2), resumed by 2 ranks, the adapter is that of the uninterrupted run."""
    ckpts = sorted((runs["c_kill"] / "checkpoints").glob("step-*"))
    assert ckpts and all((c / "rng-rank1.pt").is_file() and not (c / "rng-rank2.pt").exists() for c in ckpts)
    assert max_diff(runs["c_kill"], runs["c_full"]) <= 1e-7
    assert metrics(runs["c_kill"])["comments_seen"] == metrics(runs["c_full"])["comments_seen"]
    assert max_diff(runs["c_full"], runs["ref_sp"]) > 1e-4  # dropout made a difference to the plain run


@pytest.mark.distributed
def test_resume_across_world_sizes(runs: dict[str, Path]) -> None:
    """A 2-process (FSDP) run resumed in 1 process with grad_accum 2, and a 1-process run resumed by 2 processes
    (DDP, through the CLI) with grad_accum 1, continue the same data order with the same global batch: the reference
    adapter."""
    assert max_diff(runs["e1"], runs["ref_sp"]) <= 1e-5
    assert max_diff(runs["x1"], runs["ref_sp"]) <= 1e-5
    assert metrics(runs["x1"])["world_size"] == 2 and metrics(runs["e1"])["world_size"] == 1
    assert runs["cli_out"].read_text().count("done: 5 steps") == 1  # rank 0 alone reports


@pytest.mark.distributed
def test_fsdp_trains_and_saves_a_standard_peft_adapter(runs: dict[str, Path], tiny_model_dir: Path) -> None:
    """FSDP (sharded base and LoRA) on 2 CPU ranks, killed and resumed (full optimizer state gathered, then sharded
    again): the same adapter as one process, saved in PEFT's format and loadable with PeftModel.from_pretrained."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = metrics(runs["fsdp"])
    assert m["distributed_strategy"] == "fsdp" and m["world_size"] == 2
    assert max_diff(runs["fsdp"], runs["ref_sp"]) <= 1e-5
    assert m["final_val_nll"] == pytest.approx(metrics(runs["ref_sp"])["final_val_nll"], abs=1e-6)
    def load(run: Path) -> Any:
        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run / "adapter"))

    model, ref = load(runs["fsdp"]), load(runs["ref_sp"])
    ids = torch.tensor([[1, 5, 9, 200, 3000, 2]])
    with torch.no_grad():
        a, b = model.eval()(ids).logits, ref.eval()(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert (a - plain).abs().max() > 1e-3


@pytest.mark.distributed
def test_bench_train_nproc_times_one_and_two_processes(tiny_model_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """`vrp bench train --nproc 2`: `vrp train` in 1 process (grad_accum 2) and under torchrun in 2 (grad_accum 1)
    do the same optimizer steps (the same last loss), and the efficiency is the speedup over 2."""
    from vrp.cli import main

    data, out, raw = tmp_path / "videos.jsonl", tmp_path / "BENCH.md", tmp_path / "raw.json"
    write_jsonl_atomic(data, (v.to_json() for v in bench_videos()))
    conf = tmp_path / "bench.yaml"  # no LoRA dropout: the ranks' own dropout masks would change the loss
    conf.write_text("lora: {r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear}\n")
    rc = main(["bench", "train", "--config", str(conf), "--nproc", "2", "--quick", "--model", str(tiny_model_dir),
               "--precision", "fp32",
               "--data", str(data), "--comments-per-video", "2", "--max-prompt-tokens", "64", "--output", str(out),
               "--write-when-busy", "--json-out", str(raw)])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    bench = json.loads(raw.read_text())
    one, two = bench["runs"]
    assert (one["nproc"], one["world_size"], two["nproc"], two["world_size"]) == (1, 1, 2, 2)
    assert one["steps_timed"] == two["steps_timed"] == 2 and one["comments"] == two["comments"] > 0
    assert two["loss_last"] == pytest.approx(one["loss_last"], abs=1e-5)
    sc = bench["scaling"]
    assert sc["speedup"] == pytest.approx((two["tokens"] / two["seconds"]) / (one["tokens"] / one["seconds"]))
    assert sc["efficiency"] == pytest.approx(sc["speedup"] / 2)
    assert last == (f"scaling efficiency with 2 processes: {sc['efficiency']:.2f} (speedup {sc['speedup']:.2f}x "
                    f"over 1 process)")
    assert "## Training in several processes (" in out.read_text()


# --- no processes started ----------------------------------------------------------------------------------------
def test_launch_environment() -> None:
    from vrp.train.launch import Launch, detect_launch, resolve_strategy

    assert detect_launch({}) is None
    assert detect_launch({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Launch(3, 4, 1)
    assert detect_launch({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}) == Launch(1, 2, 1)
    with pytest.raises(VrpError, match="RANK is set but WORLD_SIZE is not"):
        detect_launch({"RANK": "0"})
    with pytest.raises(VrpError, match="WORLD_SIZE='two'"):
        detect_launch({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(VrpError, match="rank 2 .* world size 2"):
        detect_launch({"RANK": "2", "WORLD_SIZE": "2"})
    assert resolve_strategy("auto", env={}) == "ddp"
    assert resolve_strategy("auto", env={"ACCELERATE_USE_FSDP": "true"}) == "fsdp"
    assert resolve_strategy("ddp", env={"ACCELERATE_USE_FSDP": "true"}) == "ddp"
    with pytest.raises(ConfigError, match="distributed_strategy: fsdp cannot shard 4-bit"):
        resolve_strategy("auto", "4bit", env={"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(ConfigError, match="distributed_strategy: fsdp cannot shard 4-bit"):
        TrainConfig(distributed_strategy="fsdp", quantization="4bit")


def test_share_of_a_step() -> None:
    """Round-robin micro-batches; every rank makes ceil(k / W) calls; one process takes everything."""
    from vrp.train.distributed import Dist

    mbs = ["a", "b", "c", "d", "e"]
    assert Dist().share(mbs) == (mbs, 5)
    assert Dist(0, 2, strategy="ddp").share(mbs) == (["a", "c", "e"], 3)
    assert Dist(1, 2, strategy="ddp").share(mbs) == (["b", "d"], 3)
    assert Dist(1, 2, strategy="ddp").share(["a"]) == ([], 1)
    assert Dist(1, 2, strategy="ddp").grad_scale == 2 and Dist().grad_scale == 1


def test_data_position_is_global() -> None:
    from vrp.train.checkpoint import advance, data_position, position_of, steps_until

    assert advance(0, 2, 2, 5) == (0, 4) and advance(0, 4, 1, 5) == (1, 0)
    # 5 micro-batches per epoch, 2 per step: 3 steps per epoch; from (0, 4) of 2 epochs: 1 + 3 steps left
    assert steps_until(0, 4, 5, 2, 2) == 4 and steps_until(0, 0, 5, 2, 2) == 6 and steps_until(2, 0, 5, 2, 2) == 0
    assert steps_until(0, 4, 5, 1, 2) == 6  # the same place, one micro-batch per step
    saved = {"step": 2, "data_position": data_position(0, 4, 1)}
    assert position_of(saved, 5, 1, 1) == (0, 4)
    assert position_of({"step": 4}, 5, 2, 1) == (1, 2)  # written before data_position: 3 steps of 2 per epoch
    with pytest.raises(ConfigError, match="batch_size"):
        position_of(saved, 5, 1, 2)
