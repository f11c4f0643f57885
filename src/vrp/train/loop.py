"""LoRA fine-tuning: a plain PyTorch loop over packed rows, with checkpoints, exact resume and logging.

Why a plain loop and not HF Trainer/TRL: the batch unit is a packed row (a video's prompt followed by several
comments, with a 4D attention mask and restarted position ids, `vrp.packing`), and the loss is computed only at
target positions and normalised by the number of comment tokens in the whole gradient-accumulation window. Both
are awkward to express through Trainer's collator/`compute_loss` hooks and TRL re-tokenizes its own way; a short
loop keeps the collator (`packing.collate`) and the loss (`packing.loss_sum`) replaceable and the resume logic
(data position = epoch + step, restored RNG) exact and testable.

Knows: the `TrainConfig` fields (they are the `vrp train` flags), the optimizer/schedule, validation NLL, the run
dir layout (`adapter/`, `checkpoints/`, `config.yaml`, `metrics.json`, `metrics.jsonl`, `logs/` (TensorBoard),
`loss.png`). Does not know: file formats of sources (`dataset`), prompt text (`prompts`), mask building (`packing`).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from vrp.errors import VrpError
from vrp.io import check_writable, write_json_atomic, write_jsonl_atomic
from vrp.model import autocast_ctx
from vrp.options import save_config
from vrp.records import read_videos
from vrp.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from vrp.train.config import TrainConfig

__all__ = ["TrainConfig", "train", "evaluate_nll", "autocast_ctx"]


def _batches(rows: list[Any], batch_size: int) -> list[list[Any]]:
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def epoch_order(rows: list[Any], epoch: int, cfg: TrainConfig) -> list[list[Any]]:
    """Micro-batches of one epoch, shuffled with a generator seeded by (seed, epoch), so the order is a pure
    function of the config and the epoch (this is what makes resume exact). With `group_by_length`, rows are sorted
    by length inside windows of 50 batches, then the batches are shuffled (less padding, as HF's option)."""
    import random

    rng = random.Random(cfg.seed * 1000003 + epoch)
    order = list(rows)
    rng.shuffle(order)
    if cfg.group_by_length:
        window = cfg.batch_size * 50
        order = [r for i in range(0, len(order), window)
                 for r in sorted(order[i:i + window], key=lambda r: -(len(r.prompt_ids) + sum(map(len, r.completions))))]
        batches = _batches(order, cfg.batch_size)
        rng.shuffle(batches)
        return batches
    return _batches(order, cfg.batch_size)


def evaluate_nll(model: Any, rows: list[Any], pad_id: int, prec: Any, batch_size: int = 4,
                 progress: bool = False) -> dict[str, float]:
    """Mean NLL per comment token (nats) and perplexity = exp(NLL) over `rows`, shared-prefix packed, no grad."""
    import torch
    from tqdm.auto import tqdm

    from vrp.loss import loss_sum
    from vrp.packing import collate

    total, n = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast_ctx(prec):
        for b in tqdm(_batches(rows, batch_size), desc="validation", unit="batch", leave=False, disable=not progress):
            batch = {k: v.to(prec.device) if hasattr(v, "to") else v for k, v in collate(b, pad_id, "shared_prefix").items()}
            s, k = loss_sum(model, batch)
            total += float(s)
            n += int(k)
    model.train(was_training)
    nll = total / max(n, 1)
    return {"nll": nll, "perplexity": math.exp(min(nll, 50.0)), "tokens": n}


def _check_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Raise VrpError when `out` cannot be used as asked; changes nothing (so a failure later leaves no trace)."""
    if out.exists() and not out.is_dir():
        raise VrpError(f"--out: {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if resume:
            if not (out / "config.yaml").is_file():
                raise VrpError(f"--resume: {out} is not a vrp run directory (no config.yaml)")
        elif not overwrite:
            raise VrpError(f"{out}: run directory exists and is not empty; pass --resume to continue it or "
                           f"--overwrite to start over")
    elif resume:
        raise VrpError(f"--resume: {out} has no run to resume")
    check_writable(out, "--out")


def _prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Check `out` again (`_check_run_dir`), then empty it for --overwrite and create it."""
    import shutil

    _check_run_dir(out, resume, overwrite)
    if out.exists() and any(out.iterdir()):
        if resume:
            return
        shutil.rmtree(out)  # --overwrite (checked above)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VrpError(f"--out: cannot create {out} ({e.strerror or e})") from None


def _optimizer(model: Any, cfg: TrainConfig, prec: Any) -> Any:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "paged_adamw_32bit":
        if prec.device != "cuda":
            raise VrpError("--optimizer paged_adamw_32bit needs CUDA (bitsandbytes); use --optimizer adamw on a CPU")
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW32bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    raise VrpError(f"--optimizer: choose adamw or paged_adamw_32bit, got {cfg.optimizer!r}")


def _plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vrp.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4))
    tr = [(h["step"], h["loss"]) for h in history if "loss" in h]
    va = [(h["step"], h["val_nll"]) for h in history if "val_nll" in h]
    if tr:
        ax.plot(*zip(*tr), label="train loss (NLL/token)", alpha=0.8)
    if va:
        ax.plot(*zip(*va), "o-", label="validation NLL/token")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("nats per comment token")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _data_fingerprint(data_dir: Path) -> str:
    """sha256 over the dataset's split files, stored in checkpoints so that --resume can refuse other data."""
    import hashlib

    h = hashlib.sha256()
    for name in ("train.jsonl", "validation.jsonl"):
        path = data_dir / name
        h.update(name.encode() + b"\0")
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _save_adapter(model: Any, tok: Any, dest: Path) -> None:
    """Save the adapter and tokenizer to `dest` via a temporary sibling directory, so that a kill while saving
    never leaves a half-written `adapter/` that `vrp generate --run` would load."""
    import os
    import shutil

    tmp = dest.with_name(f".tmp-{dest.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def train(cfg: TrainConfig, data_dir: str | Path, out: str | Path, resume: bool = False, overwrite: bool = False,
          on_step: Callable[[int], None] | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune `cfg.model` with LoRA on `data_dir/train.jsonl`, validating on `data_dir/validation.jsonl`.

    Writes the run dir `out` (see module docstring) and returns the final metrics dict. `on_step(step)` is called
    after each optimizer step and checkpoint (tests use it to simulate a kill). Raises VrpError for a bad data dir,
    an existing run dir without `resume`/`overwrite`, or an impossible precision request.
    """
    import torch
    from tqdm.auto import tqdm

    from vrp.loss import loss_sum
    from vrp.model import (
        LoraSettings,
        attach_lora,
        check_context,
        load_base_model,
        resolve_precision,
    )
    from vrp.packing import collate, make_rows
    from vrp.prompts import encode_videos

    data_dir, out = Path(data_dir), Path(out)
    if Path(cfg.model).expanduser().exists():  # a local path is saved absolute so `generate --run` works anywhere
        cfg = replace(cfg, model=str(Path(cfg.model).expanduser().resolve()))
    if not (data_dir / "train.jsonl").is_file():
        raise VrpError(f"--data: {data_dir} has no train.jsonl; run `vrp prepare` first")
    # Everything that can fail on bad input (run dir, precision, data, model, context length, LoRA targets,
    # optimizer) is checked before the run dir is created or replaced, so a failed start leaves nothing behind.
    _check_run_dir(out, resume, overwrite)
    data_sha = _data_fingerprint(data_dir)
    if resume and (ckpt := latest_checkpoint(out)) is not None:
        saved_sha = json.loads((ckpt / "state.json").read_text()).get("data_sha256")
        if saved_sha and saved_sha != data_sha:
            raise VrpError(f"--resume: --data {data_dir} is not the data this run was trained on (its train.jsonl/"
                           f"validation.jsonl changed); resume with the same --data or start a new run")
    prec = resolve_precision(cfg.precision, cfg.quantization, cfg.device)
    train_videos = read_videos(data_dir / "train.jsonl")[: cfg.max_train_videos or None]
    val_path = data_dir / "validation.jsonl"
    val_videos = read_videos(val_path)[: cfg.max_eval_videos or None] if val_path.is_file() else []
    if not train_videos:
        raise VrpError(f"{data_dir / 'train.jsonl'}: empty dataset")
    for path, videos in ((data_dir / "train.jsonl", train_videos), (val_path, val_videos)):
        empty = next((v.video_id for v in videos if not any(c.text.strip() for c in v.comments)), None)
        if empty is not None:
            raise VrpError(f"{path}: video {empty!r} has no comment (prepare the dataset with `vrp prepare`)")
    torch.manual_seed(cfg.seed)

    model, tok = load_base_model(cfg.model, prec, cfg.attn_implementation)
    check_context(model, cfg.model, cfg.max_prompt_tokens + cfg.max_comment_tokens + 1,
                  "--max-prompt-tokens + --max-comment-tokens + 1")
    pcfg = cfg.prompt_config()
    rows = make_rows(encode_videos(tok, train_videos, pcfg), cfg.packing, cfg.max_row_tokens)
    val_rows = make_rows(encode_videos(tok, val_videos, pcfg), "shared_prefix", cfg.max_row_tokens)
    pad_id = tok.pad_token_id
    per_epoch = math.ceil(len(_batches(rows, cfg.batch_size)) / cfg.grad_accum)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * per_epoch
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)

    model = attach_lora(model, LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules),
                        prec, cfg.gradient_checkpointing)
    optimizer = _optimizer(model, cfg, prec)
    from transformers import get_scheduler

    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    _prepare_run_dir(out, resume, overwrite)
    save_config(cfg, out / "config.yaml") if not resume else None
    history: list[dict[str, Any]] = []
    step, comments_seen, tokens_seen, train_seconds = 0, 0, 0, 0.0
    base_val = None
    if resume and (ckpt := latest_checkpoint(out)) is not None:
        st = load_checkpoint(ckpt, model, optimizer, scheduler)
        step, comments_seen, tokens_seen = st["step"], st["comments_seen"], st["tokens_seen"]
        train_seconds, base_val = st["train_seconds"], st.get("base_val")
        history = st["history"]
    elif val_rows:
        base_val = evaluate_nll(model, val_rows, pad_id, prec, cfg.batch_size, progress)
        history.append({"step": 0, "val_nll": base_val["nll"]})

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "logs"))
    # metrics.jsonl holds exactly the steps of `history`: after a kill it may hold steps past the checkpoint that
    # the resumed run repeats, so it is rewritten from the checkpoint's history before appending.
    write_jsonl_atomic(out / "metrics.jsonl", (h for h in history if "loss" in h))
    log = open(out / "metrics.jsonl", "a", encoding="utf-8")
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    model.train()
    order_epoch, batches = -1, []
    try:
        while step < total_steps:
            epoch, pos = divmod(step, per_epoch)
            if epoch != order_epoch:  # the order is a pure function of (seed, epoch): computed once per epoch
                order_epoch, batches = epoch, epoch_order(rows, epoch, cfg)
            micro = batches[pos * cfg.grad_accum:(pos + 1) * cfg.grad_accum]
            t0 = time.perf_counter()
            collated = [{k: v.to(prec.device) if hasattr(v, "to") else v for k, v in collate(b, pad_id, cfg.packing).items()}
                        for b in micro]
            n_total = sum(int(b["target_ids"].numel()) for b in collated)
            loss_val = 0.0
            for batch in collated:
                with autocast_ctx(prec):
                    s, _ = loss_sum(model, batch)
                (s / n_total).backward()
                loss_val += float(s.detach()) / n_total
                comments_seen += int(batch["num_comments"])
                tokens_seen += int(batch["num_tokens"])
            gnorm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                   cfg.max_grad_norm)
            lr_used = scheduler.get_last_lr()[0]  # the rate this step was taken with
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            train_seconds += dt
            rec: dict[str, Any] = {"step": step, "epoch": epoch, "loss": loss_val, "lr": lr_used,
                                   "grad_norm": float(gnorm), "tokens_per_s": sum(int(b["num_tokens"]) for b in collated) / dt,
                                   "comments_seen": comments_seen}
            if val_rows and (step % cfg.eval_every == 0 or step == total_steps):
                rec["val_nll"] = evaluate_nll(model, val_rows, pad_id, prec, cfg.batch_size, progress)["nll"]
            history.append(rec)
            for k in ("loss", "lr", "grad_norm", "tokens_per_s", "val_nll"):
                if k in rec:
                    writer.add_scalar(f"train/{k}" if k != "val_nll" else "validation/nll", rec[k], step)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}",
                            **({"val": f"{rec['val_nll']:.3f}"} if "val_nll" in rec else {}))
            bar.update(1)
            if step % cfg.save_every == 0 or step == total_steps:
                save_checkpoint(out, step, model, optimizer, scheduler,
                                {"comments_seen": comments_seen, "tokens_seen": tokens_seen, "data_sha256": data_sha,
                                 "train_seconds": train_seconds, "base_val": base_val, "history": history},
                                keep=cfg.save_total_limit)
            if on_step:
                on_step(step)
    finally:
        bar.close()
        writer.close()
        log.close()
    _save_adapter(model, tok, out / "adapter")
    final_val = next((h["val_nll"] for h in reversed(history) if "val_nll" in h), None)
    metrics = {
        "model": cfg.model, "precision": prec.name, "packing": cfg.packing, "steps": step,
        "train_videos": len(train_videos), "train_rows": len(rows), "comments_seen": comments_seen,
        "tokens_seen": tokens_seen, "train_seconds": round(train_seconds, 2),
        "tokens_per_s": round(tokens_seen / max(train_seconds, 1e-9), 1),
        "comments_per_s": round(comments_seen / max(train_seconds, 1e-9), 3),
        "final_train_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
        "base_val_nll": base_val["nll"] if base_val else None, "final_val_nll": final_val,
        "val_videos": len(val_videos), "val_tokens": base_val["tokens"] if base_val else 0,
        "config": asdict(cfg),
    }
    write_json_atomic(out / "metrics.json", metrics)
    _plot_loss(history, out / "loss.png")
    return metrics
