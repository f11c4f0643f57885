"""LoRA fine-tuning: a plain PyTorch loop over packed rows, with checkpoints, exact resume and logging.

Why a plain loop and not HF Trainer/TRL: the batch unit is a packed row (a video's prompt followed by several
comments, with a 4D attention mask and restarted position ids, `vrp.packing`), and the loss is computed only at
target positions and normalised by the number of comment tokens in the whole gradient-accumulation window. Both
are awkward to express through Trainer's collator/`compute_loss` hooks and TRL re-tokenizes its own way; a short
loop keeps the collator (`packing.collate`) and the loss (`loss.loss_sum`) replaceable and the resume logic
(data position = epoch + step, restored RNG) exact and testable.

Knows: the order of a run — `vrp.train.setup` (checks, model, optimizer, run dir, starting state), `fit` (the
optimizer steps, validation every `eval_every` steps with the learning-curve probes and the best checkpoint,
checkpoints every `save_every` steps, one `metrics.jsonl` line and TensorBoard scalars per step), `finish` (the last
step's adapter as `adapter/`, `metrics.json`, `loss.png`, `curve.png`) — and the epoch order. In a launched run
(torchrun, accelerate launch) every process runs this loop on its share of each step (`vrp.train.distributed`) and
only rank 0 writes the run dir, the logs and the progress bar.
Does not know: file formats of sources (`dataset`), prompt text (`prompts`), mask building (`packing`), the run-dir
layout (`vrp.rundir.RunDir`), validation (`vrp.train.validate`, `vrp.train.probes`), which checkpoint is the best
(`vrp.train.checkpoint.keep_best`).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from vrp.artifacts import DatasetDir
from vrp.charts import loss_curve
from vrp.errors import VrpError
from vrp.packing import collate, micro_batches
from vrp.precision import autocast_ctx
from vrp.procmem import release_freed_memory
from vrp.rundir import RunDir
from vrp.train.checkpoint import advance, keep_best, save_checkpoint
from vrp.train.config import TrainConfig
from vrp.train.distributed import Discard
from vrp.train.memory import check_peak, out_of_memory_as_config_error, peak_memory, trim_after_step
from vrp.train.probes import curve_summary, validate, validation_scalars
from vrp.train.setup import TrainSetup, TrainState, setup, starting_state
from vrp.train.validate import evaluate_nll

__all__ = ["TrainConfig", "train", "fit", "finish", "epoch_order", "evaluate_nll"]


def epoch_order(rows: list[Any], epoch: int, cfg: TrainConfig) -> list[list[Any]]:
    """Micro-batches of one epoch, shuffled with a generator seeded by (seed, epoch), so the order is a pure
    function of the config and the epoch (this is what makes resume exact). With `group_by_length`, rows are sorted
    by length inside windows of 50 batches, then the batches are shuffled (less padding, as HF's option)."""
    rng = random.Random(cfg.seed * 1000003 + epoch)
    order = list(rows)
    rng.shuffle(order)
    if cfg.group_by_length:
        window = cfg.batch_size * 50
        order = [r for i in range(0, len(order), window)
                 for r in sorted(order[i:i + window], key=lambda r: -r.num_tokens)]
        batches = micro_batches(order, cfg.batch_size)
        rng.shuffle(batches)
        return batches
    return micro_batches(order, cfg.batch_size)


def _step(s: TrainSetup, micro: list[list[Any]], state: TrainState) -> dict[str, Any]:
    """One optimizer step over the micro-batches `micro` (gradient accumulation, loss normalised by the comment
    tokens of the whole window); updates the counters of `state` and returns the step's record (without timing).
    In a launched run each process takes its share of `micro` and the counts are summed over all processes
    (`vrp.train.distributed.Dist.share`, `grad_scale`), so the step is that of one process."""
    import torch

    cfg, prec, d = s.cfg, s.prec, s.dist
    if s.memory is not None:  # `max_memory`: each micro-batch cut into micro-batches of the planned rows
        micro = [b[i:i + s.memory.micro_rows] for b in micro for i in range(0, len(b), s.memory.micro_rows)]
    mine, calls = d.share(micro)  # this process's micro-batches; every process makes `calls` forward/backward calls
    collated = [{k: v.to(prec.device) if hasattr(v, "to") else v
                 for k, v in collate(b, s.tokenizer.pad_token_id, cfg.packing).items()} for b in mine or micro[:1]]
    own = collated[:len(mine)]  # summed over all processes before backward: the step's targets, comments, tokens
    n_total, comments, tokens = d.all_sum([sum(int(b["target_ids"].numel()) for b in own),
                                           sum(int(b["num_comments"]) for b in own),
                                           sum(int(b["num_tokens"]) for b in own)])
    loss_val = 0.0
    for i in range(calls):  # a process with fewer micro-batches repeats its first one at weight 0
        batch, weight = (collated[i], d.grad_scale) if i < len(mine) else (collated[0], 0)
        with d.sync(i == calls - 1):
            with autocast_ctx(prec):
                loss, _ = d.loss(s.model, batch)
            (loss * weight / n_total).backward()
        loss_val += float(loss.detach()) if weight else 0.0
    loss_val = d.all_sum([loss_val])[0] / n_total
    state.comments_seen += int(comments)
    state.tokens_seen += int(tokens)
    gnorm = torch.nn.utils.clip_grad_norm_([p for p in s.model.parameters() if p.requires_grad], cfg.max_grad_norm)
    lr_used = s.scheduler.get_last_lr()[0]  # the rate this step was taken with
    if not (math.isfinite(loss_val) and math.isfinite(float(gnorm))):  # before the step spoils the adapter
        raise VrpError(f"step {state.step + 1}: the training loss is {loss_val:.4g} and the gradient norm "
                       f"{float(gnorm):.4g}: training diverged (learning rate {lr_used:.3g}); lower `learning_rate` "
                       f"or use `precision` fp32. Checkpoints saved before this step are kept")
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_val, "lr": lr_used, "grad_norm": float(gnorm), "tokens": int(tokens)}


def fit(s: TrainSetup, state: TrainState, on_step: Callable[[int], None] | None = None,
        progress: bool = True) -> None:
    """Run optimizer steps from `state.step` to `s.total_steps`, validating every `eval_every` steps and at the
    end, checkpointing every `save_every` steps and at the end, writing one `metrics.jsonl` line and TensorBoard
    scalars per step. `on_step(step)` is called after each step and its checkpoint (tests use it to simulate a
    kill)."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    cfg, d = s.cfg, s.dist
    writer = SummaryWriter(str(s.run.logs_dir)) if d.is_main else Discard()  # rank 0 alone writes the run dir
    # metrics.jsonl holds exactly the steps of `history`: after a kill it may hold steps past the checkpoint that
    # the resumed run repeats, so it is rewritten from the checkpoint's history before appending.
    log = s.run.restart_history(state.history) if d.is_main else Discard()
    progress = progress and d.is_main
    if state.step == 0:  # the step-0 validation row (`starting_state`)
        for h in state.history:
            for tag, v in validation_scalars(h).items():
                writer.add_scalar(tag, v, 0)
    bar = tqdm(total=s.total_steps, initial=state.step, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True)
    s.model.train()
    order_epoch, batches = -1, []
    try:
        while state.step < s.total_steps:
            epoch = state.epoch  # the data position is global: the same order for any number of processes
            if epoch != order_epoch:  # the order is a pure function of (seed, epoch): computed once per epoch
                order_epoch, batches = epoch, epoch_order(s.rows, epoch, cfg)
            t0 = time.perf_counter()
            take = batches[state.micro_batch:state.micro_batch + cfg.grad_accum * d.world_size]
            with out_of_memory_as_config_error(s.memory.micro_rows if s.memory else cfg.batch_size,
                                               max(r.num_tokens for b in take for r in b), cfg.max_memory):
                done = _step(s, take, state)
            state.step += 1
            if s.prec.device == "cpu" and trim_after_step(state.step, s.memory is not None):
                release_freed_memory()  # rows of varying length fragment glibc's heap: give freed memory back
            state.epoch, state.micro_batch = advance(state.epoch, state.micro_batch, len(take), len(batches))
            dt = time.perf_counter() - t0
            state.train_seconds += dt
            rec: dict[str, Any] = {"step": state.step, "epoch": epoch, "loss": done["loss"], "lr": done["lr"],
                                   "grad_norm": done["grad_norm"], "tokens_per_s": done["tokens"] / dt, "seconds": dt,
                                   "comments_seen": state.comments_seen}
            if s.val_rows and (state.step % cfg.eval_every == 0 or state.step == s.total_steps):
                rec.update(validate(s, progress)[1])
                view = d.adapter_view(s.model)  # every process: FSDP gathers the LoRA weights
                if d.is_main:
                    state.best = keep_best(s.run, state.best, state.step, rec["val_nll"], view)
            state.history.append(rec)
            for k in ("loss", "lr", "grad_norm", "tokens_per_s"):
                writer.add_scalar(f"train/{k}", rec[k], state.step)
            for tag, v in validation_scalars(rec).items():
                writer.add_scalar(tag, v, state.step)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}",
                            **({"val": f"{rec['val_nll']:.3f}"} if "val_nll" in rec else {}))
            bar.update(1)
            if state.step % cfg.save_every == 0 or state.step == s.total_steps:
                save_checkpoint(s.run, state.step, s.model, s.optimizer, s.scheduler,
                                state.checkpoint_fields(s.data_sha, cfg.batch_size), keep=cfg.save_total_limit, dist=d)
            if on_step:
                on_step(state.step)
    finally:
        bar.close()
        writer.close()
        log.close()


def finish(s: TrainSetup, state: TrainState) -> dict[str, Any]:
    """Save the last step's adapter (with the tokenizer) as `adapter/` (the best one stays in its checkpoint),
    `metrics.json`, `loss.png` and `curve.png`; return the metrics."""

    view = s.dist.adapter_view(s.model)  # every process: FSDP gathers the LoRA weights; rank 0 writes
    history, base_val, secs = state.history, state.base_val, state.train_seconds
    metrics = {
        "model": s.cfg.model, "precision": s.prec.name, "packing": s.cfg.packing, "steps": state.step,
        "train_videos": s.n_train_videos, "train_rows": len(s.rows), "comments_seen": state.comments_seen,
        "tokens_seen": state.tokens_seen, "train_seconds": round(secs, 2),
        "tokens_per_s": round(state.tokens_seen / max(secs, 1e-9), 1),
        "comments_per_s": round(state.comments_seen / max(secs, 1e-9), 3),
        "final_train_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
        "base_val_nll": base_val["nll"] if base_val else None,
        "final_val_nll": next((h["val_nll"] for h in reversed(history) if "val_nll" in h), None),
        "val_videos": s.n_val_videos, "val_tokens": base_val["tokens"] if base_val else 0,
        "world_size": s.dist.world_size, "distributed_strategy": s.dist.strategy, "config": asdict(s.cfg),
        **peak_memory(s.prec.device), "memory_plan": s.memory.to_json() if s.memory else None,
        "packing_check": getattr(s, "packing_check", None),  # `vrp.train.packing_check`: packed == per example
    }
    metrics.update(check_peak(s.memory, metrics, s.prec.device))  # a budget that was not kept is said
    if not s.dist.is_main:
        return metrics
    s.run.save_adapter(view, s.tokenizer)
    metrics.update(curve_summary(s, state))  # best step and NLL, last probe values; draws curve.png
    s.run.write_metrics(metrics)
    loss_curve(history, s.run.loss_png)
    return metrics


def train(cfg: TrainConfig, data_dir: str | Path | DatasetDir, out: str | Path | RunDir, resume: bool = False,
          overwrite: bool = False, on_step: Callable[[int], None] | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Fine-tune `cfg.model` with LoRA on the dataset dir's `train.jsonl`, validating on its `validation.jsonl`.

    Writes the run dir `out` (layout: `vrp.rundir.RunDir`) and returns the final metrics dict. `resume`
    continues the run from its newest checkpoint (the data must be the same); `overwrite` empties a non-empty run
    dir first. Raises ConfigError / VrpError for a bad data dir, an existing run dir without `resume`/`overwrite`,
    a run dir another command is writing (ConfigError('out'), `vrp.locks`), or an impossible precision request,
    before anything is written.
    """
    data = data_dir if isinstance(data_dir, DatasetDir) else DatasetDir(data_dir)
    run = out if isinstance(out, RunDir) else RunDir(out)
    lock = run.lock("vrp train")  # one writer per run dir (`vrp.locks`): rank 0 holds it until the run ends
    try:
        s = setup(cfg, data, run, resume, overwrite, lock, progress)
        state = starting_state(s, resume, progress and s.dist.is_main)
        fit(s, state, on_step, progress)
        return finish(s, state)
    finally:
        lock.release()
