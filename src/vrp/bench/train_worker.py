"""One configuration of `vrp bench train`, run in its own process: `python -m vrp.bench.train_worker SPEC OUT`.

Knows: how to time LoRA training steps of one configuration on already-tokenized videos and report them as JSON:
- `trl`: TRL's `SFTTrainer`, one example per row (prompt ids + completion ids, `completion_mask`, completion-only
  loss), sequential sampler, timed by a `TrainerCallback` from the end of one optimizer step to the end of the next;
- `none` / `shared_prefix`: the vrp training step (`vrp.packing.collate` + `loss_sum` under `autocast_ctx` +
  backward + gradient clipping + AdamW step + giving freed heap memory back every 8th step), the work
  `vrp.train.loop.train` does per optimizer step, timed from the collate to the end of the optimizer step;
- `val`: `vrp.train.loop.train` with packing `none` and `shared_prefix` on the same comments and the same optimizer
  steps, returning the validation NLL per comment token of both;
- `memory`: one training step of packing `spec['mode']` (`none`, `shared_prefix`) profiled by
  `vrp.bench.memory.profile_step`, or for `trl` the peak RSS of one SFTTrainer step, on the rows of the spec (the
  bench gives every configuration the same shape).
Each timed configuration first runs one warm-up step on its first batch (not timed) and then its first `steps`
batches (all when `steps` is 0), each timed on its own (per-step seconds, comments and tokens are returned). The
vrp configurations train as `vrp train` does (lean LoRA, `TrainConfig`'s attention implementation). The process's
peak resident set size (peak RSS: `getrusage(RUSAGE_SELF).ru_maxrss`, reported in bytes) is that of this
configuration alone.
Does not know: how configurations are chosen, compared or reported (see `vrp.bench.train`).
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vrp.adapter import attach_lora
from vrp.attention import MIN_PREFIX, scored_pairs
from vrp.bench.flops import FlopDims, dims_from_model, executed_flops, useful_flops
from vrp.bench.memory import profile_step
from vrp.bench.optime import step_flops, time_step
from vrp.files import write_json_atomic
from vrp.lora import LoraSettings
from vrp.loss import loss_sum
from vrp.model import load_base_model
from vrp.packing import Row, collate, make_rows
from vrp.precision import autocast_ctx, resolve_precision
from vrp.procmem import peak_rss_bytes, release_freed_memory
from vrp.prompts import EncodedVideo
from vrp.train.compile import compile_decoder_layers
from vrp.train.config import TrainConfig
from vrp.train.loop import train
from vrp.train.memory import trim_after_step


def _load(spec: dict[str, Any], attn: str | None = None) -> tuple[Any, Any, Any]:
    prec = resolve_precision(spec["precision"], "none", "cpu")
    model, tok = load_base_model(spec["model"], prec, attn or spec.get("attn_implementation") or "sdpa")
    return prec, model, tok


def _vrp_model(spec: dict[str, Any]) -> tuple[Any, Any, Any]:
    """`(prec, model, tokenizer)`: the base model with LoRA attached as `vrp train` does it."""
    import torch

    prec, model, tok = _load(spec)
    torch.manual_seed(int(spec.get("seed", 0)))
    model = attach_lora(model, LoraSettings(**spec["lora"]), prec, bool(spec.get("gradient_checkpointing")),
                        lean=bool(spec.get("lean", True)))
    if spec.get("compile_layers"):  # compiled in the untimed warm-up step

        compile_decoder_layers(model)
    return prec, model, tok


def _encoded(spec: dict[str, Any]) -> list[Any]:
    return [EncodedVideo(v["video_id"], v["prompt_ids"], v["completions"]) for v in spec["videos"]]


def _account(dims: FlopDims, lengths: list[tuple[int, int]], head_positions: int, dense: bool,
             row_lengths: list[int], causal_prefix: int = 0, pairs: float | None = None) -> dict[str, float]:
    """Useful and executed FLOPs of one batch. lengths: (prompt tokens, comment tokens) of each comment."""
    return {"useful_flops": sum(useful_flops(dims, p, c) for p, c in lengths),
            "executed_flops": executed_flops(dims, row_lengths, head_positions, dense, causal_prefix, pairs)}


def _attention_shape(batch: dict[str, Any], lens: list[int], mode: str,
                     spec: dict[str, Any]) -> tuple[bool, int, float | None]:
    """(dense, causal prefix, scored pairs or None) of a collated vrp batch for `executed_flops`: an explicit mask
    (shared-prefix rows or padded rows) scores every pair, except what `split_sdpa` runs with the causal kernel
    (padded rows: up to the shortest row) or by segments (`vrp.attention.scored_pairs`)."""
    dense = mode == "shared_prefix" or len(set(lens)) > 1
    if not dense or spec.get("attn_implementation") != "split_sdpa":
        return dense, 0, None

    mask = batch["attention_mask"]
    if mask.ndim == 2:  # padded `none` rows: transformers' causal + padding mask, causal up to the shortest
        return dense, min(lens) if min(lens) >= MIN_PREFIX else 0, None
    return dense, 0, scored_pairs(mask)[0]


def _summary(step_seconds: list[float], per_step: list[dict[str, float]], extra: dict[str, Any]) -> dict[str, Any]:
    """Totals over the timed steps (the first entry of `step_seconds` is the warm-up and is left out), and each
    timed step's seconds, comments, tokens and padded shape in `per_step`."""

    timed = step_seconds[1:]
    out = {k: sum(s[k] for s in per_step) for k in per_step[0]} if per_step else {}
    out.update({"step_seconds": step_seconds, "steps_timed": len(timed), "seconds": sum(timed),
                "per_step": [{"seconds": t, "comments": s["comments"], "tokens": s["tokens"], "rows": s["rows"],
                              "row_tokens": s["padded_tokens"] // max(s["rows"], 1)} for t, s in zip(timed, per_step)],
                "peak_rss_bytes": peak_rss_bytes()})
    out.update(extra)
    return out


def run_vrp(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the vrp training step for packing mode `spec['kind']` (`none` or `shared_prefix`)."""
    import torch

    mode, bs = spec["kind"], int(spec["batch_size"])
    prec, model, tok = _vrp_model(spec)
    dims = dims_from_model(model)
    rows = make_rows(_encoded(spec), mode, int(spec["max_row_tokens"]))
    batches = [rows[i:i + bs] for i in range(0, len(rows), bs)][:int(spec.get("steps") or 0) or None]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(spec["learning_rate"]), fused=True)  # as `vrp train`
    model.train()
    times: list[float] = []
    per_step: list[dict[str, float]] = []
    losses: list[float] = []
    for i, b in enumerate([batches[0]] + batches):
        t0 = time.perf_counter()
        batch = {k: v.to(prec.device) if hasattr(v, "to") else v for k, v in collate(b, tok.pad_token_id, mode).items()}
        with autocast_ctx(prec):
            s, n = loss_sum(model, batch)
        (s / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if trim_after_step(i + 1, False):  # as `vrp train` does on a CPU (without a memory budget)
            release_freed_memory()
        times.append(time.perf_counter() - t0)
        losses.append(float(s.detach()) / n)
        if i == 0:
            continue
        lens = [r.num_tokens for r in b]
        dense, prefix, pairs = _attention_shape(batch, lens, mode, spec)
        acc = _account(dims, [(len(r.prompt_ids), len(c)) for r in b for c in r.completions], n, dense, lens, prefix,
                       pairs)
        per_step.append({"comments": batch["num_comments"], "tokens": batch["num_tokens"], "rows": len(b),
                         "padded_tokens": len(b) * max(lens), **acc})
    return _summary(times, per_step, {"kind": mode, "precision": prec.name, "threads": torch.get_num_threads(),
                                      "row_tokens_max": max(r.num_tokens for r in rows),
                                      "row_tokens_mean": sum(r.num_tokens for r in rows) / len(rows),
                                      "loss_first": losses[1] if len(losses) > 1 else None,
                                      "loss_last": losses[-1]})


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """Time TRL's `SFTTrainer` (one example per row, completion-only loss) on the same comments."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    bs = int(spec["batch_size"])
    prec, model, tok = _load(spec, "sdpa")
    examples = [(list(v.prompt_ids), list(c)) for v in _encoded(spec) for c in v.completions]
    examples = examples[:int(spec.get("steps") or 0) * bs or None]
    plan = examples[:bs] + examples                   # warm-up batch, then the timed examples once, in order
    ds = Dataset.from_dict({"input_ids": [p + c for p, c in plan],
                            "completion_mask": [[0] * len(p) + [1] * len(c) for p, c in plan]})

    class StepTimer(TrainerCallback):
        """Wall-clock marks: the first step's begin, then every optimizer step's end (seconds, perf_counter)."""

        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not self.marks:
                self.marks.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.marks.append(time.perf_counter())

    lora = spec["lora"]
    peft_cfg = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], bias="none",
                          target_modules=lora["target_modules"], task_type="CAUSAL_LM")
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="vrp-bench-trl-") as tmp:
        args = SFTConfig(output_dir=tmp, per_device_train_batch_size=bs, gradient_accumulation_steps=1,
                         max_steps=1 + math.ceil(len(examples) / bs), learning_rate=float(spec["learning_rate"]),
                         max_grad_norm=1.0, bf16=prec.autocast_dtype is not None, use_cpu=True, report_to=[],
                         dataloader_num_workers=0, save_strategy="no", eval_strategy="no", logging_strategy="no",
                         disable_tqdm=True, max_length=None, completion_only_loss=True,
                         train_sampling_strategy="sequential", seed=int(spec.get("seed", 0)))
        torch.manual_seed(int(spec.get("seed", 0)))
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_cfg,
                             callbacks=[timer])
        dims = dims_from_model(trainer.model)
        out = trainer.train()
    times = [b - a for a, b in zip(timer.marks, timer.marks[1:])]
    per_step = []
    for i in range(0, len(examples), bs):
        b = examples[i:i + bs]
        lens = [len(p) + len(c) for p, c in b]
        # TRL 1.16's fused LM head scores every position but the last of each row on a CPU (no Triton).
        acc = _account(dims, [(len(p), len(c)) for p, c in b], len(b) * (max(lens) - 1), len(set(lens)) > 1, lens)
        per_step.append({"comments": len(b), "tokens": sum(lens), "rows": len(b), "padded_tokens": len(b) * max(lens),
                         **acc})
    return _summary(times, per_step, {"kind": "trl", "precision": prec.name, "threads": torch.get_num_threads(),
                                      "row_tokens_max": max(len(p) + len(c) for p, c in examples),
                                      "row_tokens_mean": sum(len(p) + len(c) for p, c in examples) / len(examples),
                                      "loss_first": None, "loss_last": float(out.training_loss)})


def run_val(spec: dict[str, Any]) -> dict[str, Any]:
    """Train with `vrp.train.loop.train` in packing modes `none` and `shared_prefix` on `spec['data_dir']` with the
    same optimizer steps (each step = every training comment, via gradient accumulation) and return both runs'
    validation NLL per comment token (nats)."""

    res: dict[str, Any] = {"kind": "val"}
    for mode in ("none", "shared_prefix"):
        v = spec["val"]
        lora = spec["lora"]
        cfg = TrainConfig(model=spec["model"], precision=spec["precision"], packing=mode,
                          max_prompt_tokens=v["max_prompt_tokens"], max_comment_tokens=v["max_comment_tokens"],
                          max_row_tokens=int(spec["max_row_tokens"]), lora_r=lora["r"], lora_alpha=lora["alpha"],
                          lora_dropout=0.0, target_modules=lora["target_modules"], learning_rate=v["learning_rate"],
                          lr_scheduler="constant", warmup_ratio=0.0, batch_size=int(spec["batch_size"]),
                          grad_accum=int(v["grad_accum"][mode]), epochs=int(v["steps"]), max_steps=-1,
                          eval_every=10 ** 6, save_every=10 ** 6, save_total_limit=1, seed=0, curve_videos=0,
                          attn_implementation=spec.get("attn_implementation") or "sdpa")
        m = train(cfg, spec["data_dir"], Path(spec["data_dir"]) / f"run-{mode}", overwrite=True, progress=False)
        res[mode] = {k: m[k] for k in ("steps", "comments_seen", "base_val_nll", "final_val_nll", "val_tokens")}
    return res


def run_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Memory of one training step on the rows of `spec` (all in one micro-batch): for packing `spec['mode']`
    `none` / `shared_prefix` the `vrp.bench.memory.profile_step` breakdown, for `trl` the peak RSS of a TRL
    SFTTrainer run of a warm-up and one step on the same examples."""
    import torch

    mode = spec["mode"]
    rows = [Row(list(r["prompt_ids"]), [list(c) for c in r["completions"]]) for r in spec["rows"]]
    if mode == "trl":
        sub = dict(spec, kind="trl", batch_size=len(rows), steps=1,
                   videos=[{"video_id": str(i), "prompt_ids": r.prompt_ids, "completions": r.completions}
                           for i, r in enumerate(rows)])
        res = run_trl(sub)
        return {"kind": "memory", "mode": mode, "peak_rss_bytes": res["peak_rss_bytes"],
                "rows": len(rows), "row_tokens": max(r.num_tokens for r in rows)}

    prec, model, tok = _vrp_model(spec)
    batch = {k: v.to(prec.device) if hasattr(v, "to") else v for k, v in collate(rows, tok.pad_token_id, mode).items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(spec["learning_rate"]),
                            fused=True)
    prof = profile_step(model, batch, prec, opt)
    peak = peak_rss_bytes()
    times = _time_profile(spec, model, batch, prec, opt, rows, mode)
    return {"kind": "memory", "mode": mode, "profile": prof, "time": times, "peak_rss_bytes": peak,
            "rows": prof["rows"], "row_tokens": prof["row_tokens"], "precision": prec.name,
            "attn_implementation": spec.get("attn_implementation"), "lean": bool(spec.get("lean", True))}


def _time_profile(spec: dict[str, Any], model: Any, batch: dict[str, Any], prec: Any, opt: Any, rows: list[Any],
                  mode: str) -> dict[str, Any]:
    """`vrp.bench.optime.time_step` of one more training step on `batch` (the model and AdamW are warm)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        with autocast_ctx(prec):
            s, n = loss_sum(model, batch)
        (s / max(n, 1)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    lens = [r.num_tokens for r in rows]
    dense, prefix, pairs = _attention_shape(batch, lens, mode, spec)
    attention, other = step_flops(dims_from_model(model), lens, int(batch["num_targets"]), dense, prefix, pairs)
    return time_step(step, attention, other)


def main(argv: list[str] | None = None) -> int:
    """`python -m vrp.bench.train_worker SPEC.json OUT.json`: run the configuration in SPEC, write OUT."""
    spec_path, out_path = (argv if argv is not None else sys.argv[1:])[:2]
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    runs = {"trl": run_trl, "none": run_vrp, "shared_prefix": run_vrp, "val": run_val, "memory": run_memory}
    run = runs[spec["kind"]]

    write_json_atomic(out_path, run(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
