"""Training checkpoints: adapter, optimizer, scheduler, RNG states and data position, written atomically.

Knows: what a checkpoint holds — `step-000050/{adapter/, optimizer.pt, scheduler.pt, rng.pt, state.json}` under
the run dir's checkpoints (`vrp.rundir.RunDir.checkpoint_dir`); a checkpoint directory is first written as
`.tmp-step-...` and renamed when complete (with its state.json, which makes it count as complete for
`RunDir.checkpoints`), so a kill never leaves a checkpoint that a resume would trust. Keeps the newest `keep`.
Also the best checkpoint by validation NLL: `best-NNNNNN/{adapter/, state.json}` (`RunDir.best_checkpoint`), written
at a validation whose NLL is lower than every earlier one (step 0, the base model with its zero-initialised LoRA,
included) and never pruned with the step checkpoints; the new one is complete before the old one is removed.
The data position (`data_position` in state.json) is global: the epoch and the micro-batches of its one-process
order already trained, so a run saved by N processes resumes in M processes (or with another `grad_accum`) at the
same place in the same order. Checkpoints of a launched run are written by rank 0 with the full LoRA weights and
optimizer state (`vrp.train.distributed`) and one RNG state per rank.
Does not know: how training proceeds.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any

from vrp.errors import ConfigError, VrpError
from vrp.rundir import RunDir


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fresh_tmp(final: Path) -> Path:
    """An empty hidden sibling `.tmp-<name>` of `final`, where a checkpoint is written before its atomic rename
    (a leftover from an interrupted save is removed first)."""
    tmp = final.with_name(f".tmp-{final.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(run: RunDir, step: int, model: Any, optimizer: Any, scheduler: Any,
                    state: dict[str, Any], keep: int = 2, dist: Any = None) -> Path | None:
    """Write checkpoint `step` of `run` (`state` goes to its state.json with the step) and prune the older complete
    ones beyond `keep` (0 = keep all). Returns its path.

    In a launched run (`dist`, `vrp.train.distributed.Dist`) every rank must call it: the LoRA weights and the
    optimizer state are gathered in full (FSDP) and every rank's RNG state is collected; rank 0 writes them
    (`rng.pt` its own, `rng-rank1.pt`, ... the other ranks') and returns the path, the other ranks None."""
    import torch

    if dist is not None and dist.active:
        adapter, opt_state = dist.adapter_view(model), dist.full_optimizer_state(optimizer)
        rngs = dist.gather_objects(rng_state())
        if not dist.is_main:
            return None
    else:
        adapter, opt_state, rngs = model, optimizer.state_dict(), [rng_state()]
    final = run.checkpoint_dir(step)
    tmp = _fresh_tmp(final)
    adapter.save_pretrained(tmp / RunDir.ADAPTER)
    torch.save(opt_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for rank, rng in enumerate(rngs):
        torch.save(rng, tmp / ("rng.pt" if rank == 0 else f"rng-rank{rank}.pt"))
    (tmp / RunDir.STATE).write_text(json.dumps(dict(state, step=step), indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in run.checkpoints()[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def _read_checkpoint(ckpt: Path) -> dict[str, Any]:
    """The contents of checkpoint `ckpt`, tensors on the CPU: adapter weights (PEFT file keys), optimizer and
    scheduler states, the RNG states of ranks 0, 1, ... and state.json."""
    import torch
    from safetensors.torch import load_file

    weights = ckpt / RunDir.ADAPTER / "adapter_model.safetensors"
    if not weights.is_file():
        raise VrpError(f"{ckpt}: checkpoint has no adapter weights")
    rngs, rank = [torch.load(ckpt / "rng.pt", weights_only=False)], 1
    while (ckpt / f"rng-rank{rank}.pt").is_file():
        rngs.append(torch.load(ckpt / f"rng-rank{rank}.pt", weights_only=False))
        rank += 1
    return {"adapter": load_file(str(weights)),
            "optimizer": torch.load(ckpt / "optimizer.pt", weights_only=False, map_location="cpu"),
            "scheduler": torch.load(ckpt / "scheduler.pt", weights_only=False), "rng": rngs,
            "state": json.loads((ckpt / RunDir.STATE).read_text())}


def load_checkpoint(ckpt: Path, model: Any, optimizer: Any, scheduler: Any, dist: Any = None) -> dict[str, Any]:
    """Load adapter weights, optimizer, scheduler and RNG states from `ckpt`; return its state dict.

    In a launched run (`dist`) every rank must call it: rank 0 reads the files and broadcasts them (only rank 0 needs
    the run dir); each rank restores its own RNG state, or, when the run was saved by fewer ranks, rank 0's with
    torch's generator reseeded from the step and the rank (dropout masks then differ from the saved run's)."""
    import torch
    from peft import set_peft_model_state_dict

    active = dist is not None and dist.active
    data = dist.main_only(_read_checkpoint, ckpt) if active else _read_checkpoint(ckpt)
    set_peft_model_state_dict(model, data["adapter"])
    if active:
        dist.load_optimizer_state(optimizer, data["optimizer"])
    else:
        optimizer.load_state_dict(data["optimizer"])
    scheduler.load_state_dict(data["scheduler"])
    rank = dist.rank if active else 0
    set_rng_state(data["rng"][min(rank, len(data["rng"]) - 1)])
    if rank >= len(data["rng"]):
        torch.manual_seed(int(data["state"]["step"]) * 1000003 + 7919 * rank)
    return data["state"]


# --- the data position: where in the epoch order a run stands, independent of the number of processes ---------
def data_position(epoch: int, micro_batch: int, batch_size: int) -> dict[str, int]:
    """The `data_position` of a checkpoint's state.json: the epoch and how many micro-batches of that epoch's order
    (`vrp.train.loop.epoch_order`, micro-batches of `batch_size` rows) were trained, whatever the world size and
    `grad_accum` that trained them."""
    return {"epoch": epoch, "micro_batch": micro_batch, "batch_size": batch_size}


def position_of(state: dict[str, Any], n_batches: int, grad_accum: int, batch_size: int) -> tuple[int, int]:
    """`(epoch, micro-batches of its order trained)` of a checkpoint's state.json: its `data_position`, or, for a
    checkpoint written before that existed (one process, `grad_accum` micro-batches per step, an epoch of
    ceil(n_batches / grad_accum) steps), derived from its step. Raises ConfigError('batch_size') when the checkpoint
    counted micro-batches of another size."""
    pos = state.get("data_position")
    if pos:
        if int(pos["batch_size"]) != batch_size:
            raise ConfigError("batch_size", f"the checkpoint's data position counts micro-batches of "
                                            f"{pos['batch_size']} rows, the run has {batch_size}")
        return int(pos["epoch"]), int(pos["micro_batch"])
    epoch, k = divmod(int(state["step"]), max(1, math.ceil(n_batches / grad_accum)))
    return epoch, k * grad_accum


def advance(epoch: int, micro_batch: int, taken: int, n_batches: int) -> tuple[int, int]:
    """The position after a step that trained `taken` micro-batches of an epoch of `n_batches`: the next epoch
    starts when this one is used up."""
    micro_batch += taken
    return (epoch + 1, 0) if micro_batch >= n_batches else (epoch, micro_batch)


def steps_until(epoch: int, micro_batch: int, n_batches: int, per_step: int, epochs: int) -> int:
    """Optimizer steps of `per_step` micro-batches (grad_accum x world size) from the position to the end of epoch
    `epochs - 1`; each epoch's last step takes what is left of it."""
    if epoch >= epochs:
        return 0
    return (math.ceil((n_batches - micro_batch) / per_step)
            + (epochs - epoch - 1) * math.ceil(n_batches / per_step))


def save_best(run: RunDir, step: int, model: Any, val_nll: float) -> Path:
    """Write `model`'s adapter as the best checkpoint of `run` (step `step`, validation NLL `val_nll` in nats per
    comment token, both in its state.json), then remove the earlier best ones. Returns its path."""
    final = run.best_checkpoint_dir(step)
    tmp = _fresh_tmp(final)
    model.save_pretrained(tmp / RunDir.ADAPTER)
    (tmp / RunDir.STATE).write_text(json.dumps({"step": step, "val_nll": val_nll}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in run.checkpoints_dir.glob(f"{RunDir.BEST_PREFIX}*"):
        if old != final:
            shutil.rmtree(old)
    return final


def keep_best(run: RunDir, best: dict[str, Any] | None, step: int, val_nll: float, model: Any) -> dict[str, Any] | None:
    """The best `{step, val_nll}` after a validation of step `step`: when `val_nll` is finite and lower than `best`'s
    (or there is none), the adapter is saved as the best checkpoint (`save_best`) and the new record returned; else
    `best` unchanged."""
    if not math.isfinite(val_nll) or (best is not None and val_nll >= best["val_nll"]):
        return best
    save_best(run, step, model, val_nll)
    return {"step": step, "val_nll": val_nll}


def resumed_best(run: RunDir, saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """The best record a resumed run continues with: `saved` (from the checkpoint's state.json), or the run's best
    checkpoint on disk when that one is better. A best is written before the step's checkpoint, so after a kill the
    disk may hold a best of a step after the resumed checkpoint: its weights were measured and stay the best; the
    replayed steps only replace it with a lower NLL."""
    ckpt = run.best_checkpoint()
    if ckpt is None:
        return saved
    disk = run.checkpoint_state(ckpt)
    if saved is None or disk["val_nll"] < saved["val_nll"]:
        return {"step": disk["step"], "val_nll": disk["val_nll"]}
    return saved
