"""LoRA fine-tuning: a plain PyTorch loop over packed rows, with checkpoints, exact resume and logging.

Why a plain loop and not HF Trainer/TRL: the batch unit is a packed row (a video's prompt followed by several
comments, with a 4D attention mask and restarted position ids, `vrp.packing`), and the loss is computed only at
target positions and normalised by the number of comment tokens in the whole gradient-accumulation window. Both
are awkward to express through Trainer's collator/`compute_loss` hooks and TRL re-tokenizes its own way; a short
loop keeps the collator (`packing.collate`) and the loss (`loss.loss_sum`) replaceable and the resume logic
(data position = epoch + step, restored RNG) exact and testable.

Knows: the order of a run — `vrp.train.setup` (checks, model, optimizer, run dir, starting state), `fit` (the
optimizer steps, validation every `eval_every` steps, checkpoints every `save_every` steps, one `metrics.jsonl` line
and TensorBoard scalars per step), `finish` (adapter, `metrics.json`, `loss.png`) — and the epoch order.
Does not know: file formats of sources (`dataset`), prompt text (`prompts`), mask building (`packing`), the run-dir
layout (`vrp.artifacts.RunDir`), validation (`vrp.train.validate`).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from vrp.artifacts import DatasetDir, RunDir
from vrp.model import autocast_ctx
from vrp.train.checkpoint import save_checkpoint
from vrp.train.config import TrainConfig
from vrp.train.setup import TrainSetup, TrainState, micro_batches, setup, starting_state
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
    tokens of the whole window); updates the counters of `state` and returns the step's record (without timing)."""
    import torch

    from vrp.loss import loss_sum
    from vrp.packing import collate

    cfg, prec = s.cfg, s.prec
    collated = [{k: v.to(prec.device) if hasattr(v, "to") else v
                 for k, v in collate(b, s.tokenizer.pad_token_id, cfg.packing).items()} for b in micro]
    n_total = sum(int(b["target_ids"].numel()) for b in collated)
    loss_val = 0.0
    for batch in collated:
        with autocast_ctx(prec):
            loss, _ = loss_sum(s.model, batch)
        (loss / n_total).backward()
        loss_val += float(loss.detach()) / n_total
        state.comments_seen += int(batch["num_comments"])
        state.tokens_seen += int(batch["num_tokens"])
    gnorm = torch.nn.utils.clip_grad_norm_([p for p in s.model.parameters() if p.requires_grad], cfg.max_grad_norm)
    lr_used = s.scheduler.get_last_lr()[0]  # the rate this step was taken with
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_val, "lr": lr_used, "grad_norm": float(gnorm),
            "tokens": sum(int(b["num_tokens"]) for b in collated)}


def fit(s: TrainSetup, state: TrainState, on_step: Callable[[int], None] | None = None,
        progress: bool = True) -> None:
    """Run optimizer steps from `state.step` to `s.total_steps`, validating every `eval_every` steps and at the
    end, checkpointing every `save_every` steps and at the end, writing one `metrics.jsonl` line and TensorBoard
    scalars per step. `on_step(step)` is called after each step and its checkpoint (tests use it to simulate a
    kill)."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    cfg = s.cfg
    writer = SummaryWriter(str(s.run.logs_dir))
    # metrics.jsonl holds exactly the steps of `history`: after a kill it may hold steps past the checkpoint that
    # the resumed run repeats, so it is rewritten from the checkpoint's history before appending.
    log = s.run.restart_history(h for h in state.history if "loss" in h)
    bar = tqdm(total=s.total_steps, initial=state.step, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True)
    s.model.train()
    order_epoch, batches = -1, []
    try:
        while state.step < s.total_steps:
            epoch, pos = divmod(state.step, s.per_epoch)
            if epoch != order_epoch:  # the order is a pure function of (seed, epoch): computed once per epoch
                order_epoch, batches = epoch, epoch_order(s.rows, epoch, cfg)
            t0 = time.perf_counter()
            done = _step(s, batches[pos * cfg.grad_accum:(pos + 1) * cfg.grad_accum], state)
            state.step += 1
            dt = time.perf_counter() - t0
            state.train_seconds += dt
            rec: dict[str, Any] = {"step": state.step, "epoch": epoch, "loss": done["loss"], "lr": done["lr"],
                                   "grad_norm": done["grad_norm"], "tokens_per_s": done["tokens"] / dt,
                                   "comments_seen": state.comments_seen}
            if s.val_rows and (state.step % cfg.eval_every == 0 or state.step == s.total_steps):
                rec["val_nll"] = evaluate_nll(s.model, s.val_rows, s.tokenizer.pad_token_id, s.prec, cfg.batch_size,
                                              progress)["nll"]
            state.history.append(rec)
            for k in ("loss", "lr", "grad_norm", "tokens_per_s", "val_nll"):
                if k in rec:
                    writer.add_scalar(f"train/{k}" if k != "val_nll" else "validation/nll", rec[k], state.step)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}",
                            **({"val": f"{rec['val_nll']:.3f}"} if "val_nll" in rec else {}))
            bar.update(1)
            if state.step % cfg.save_every == 0 or state.step == s.total_steps:
                save_checkpoint(s.run, state.step, s.model, s.optimizer, s.scheduler,
                                state.checkpoint_fields(s.data_sha), keep=cfg.save_total_limit)
            if on_step:
                on_step(state.step)
    finally:
        bar.close()
        writer.close()
        log.close()


def finish(s: TrainSetup, state: TrainState) -> dict[str, Any]:
    """Save the adapter (with the tokenizer), `metrics.json` and `loss.png`; return the metrics."""
    from vrp.charts import loss_curve

    s.run.save_adapter(s.model, s.tokenizer)
    history, base_val, secs = state.history, state.base_val, state.train_seconds
    metrics = {
        "model": s.cfg.model, "precision": s.prec.name, "packing": s.cfg.packing, "steps": state.step,
        "train_videos": len(s.train_videos), "train_rows": len(s.rows), "comments_seen": state.comments_seen,
        "tokens_seen": state.tokens_seen, "train_seconds": round(secs, 2),
        "tokens_per_s": round(state.tokens_seen / max(secs, 1e-9), 1),
        "comments_per_s": round(state.comments_seen / max(secs, 1e-9), 3),
        "final_train_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
        "base_val_nll": base_val["nll"] if base_val else None,
        "final_val_nll": next((h["val_nll"] for h in reversed(history) if "val_nll" in h), None),
        "val_videos": len(s.val_videos), "val_tokens": base_val["tokens"] if base_val else 0,
        "config": asdict(s.cfg),
    }
    s.run.write_metrics(metrics)
    loss_curve(history, s.run.loss_png)
    return metrics


def train(cfg: TrainConfig, data_dir: str | Path | DatasetDir, out: str | Path | RunDir, resume: bool = False,
          overwrite: bool = False, on_step: Callable[[int], None] | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Fine-tune `cfg.model` with LoRA on the dataset dir's `train.jsonl`, validating on its `validation.jsonl`.

    Writes the run dir `out` (layout: `vrp.artifacts.RunDir`) and returns the final metrics dict. `resume`
    continues the run from its newest checkpoint (the data must be the same); `overwrite` empties a non-empty run
    dir first. Raises ConfigError / VrpError for a bad data dir, an existing run dir without `resume`/`overwrite`,
    or an impossible precision request, before anything is written.
    """
    data = data_dir if isinstance(data_dir, DatasetDir) else DatasetDir(data_dir)
    run = out if isinstance(out, RunDir) else RunDir(out)
    s = setup(cfg, data, run, resume, overwrite)
    state = starting_state(s, resume, progress)
    fit(s, state, on_step, progress)
    return finish(s, state)
