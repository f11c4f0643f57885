"""Training checkpoints: adapter, optimizer, scheduler, RNG states and data position, written atomically.

Knows: what a checkpoint holds — `step-000050/{adapter/, optimizer.pt, scheduler.pt, rng.pt, state.json}` under
the run dir's checkpoints (`vrp.rundir.RunDir.checkpoint_dir`); a checkpoint directory is first written as
`.tmp-step-...` and renamed when complete (with its state.json, which makes it count as complete for
`RunDir.checkpoints`), so a kill never leaves a checkpoint that a resume would trust; a checkpoint damaged later
(a garbage state.json, a truncated file) is found before anything is loaded (`checkpoint_problem`) and a resume
falls back to the newest sound one (`resume_checkpoint`). Keeps the newest `keep`.
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
import sys
from pathlib import Path
from typing import Any

from vrp.errors import ConfigError, VrpError, first_line
from vrp.rundir import RunDir, check_adapter


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


WEIGHTS = "adapter_model.safetensors"
TORCH_FILES = ("optimizer.pt", "scheduler.pt", "rng.pt")  # torch.save files of every checkpoint (zip archives)
STATE_FIELDS = ("comments_seen", "tokens_seen", "train_seconds", "history")  # what a resume reads besides `step`


def checkpoint_problem(run: RunDir, ckpt: Path) -> str | None:
    """Why a resume cannot start from checkpoint `ckpt` - `<file>: <what is wrong>` for its first damaged or
    missing file - or None. Checked without loading the tensors: state.json (a JSON object with the step of the
    checkpoint's name and the counters a resume reads), the adapter's safetensors header (its offsets must cover
    the file: a truncated file fails), and that each `torch.save` file is a complete zip archive (its central
    directory is at the end, so a truncated file fails)."""
    import zipfile

    try:
        state = run.checkpoint_state(ckpt)
    except VrpError as e:
        return str(e)
    missing = [k for k in STATE_FIELDS if k not in state]
    if missing:
        return f"{ckpt / RunDir.STATE}: damaged checkpoint state (no {', '.join(map(repr, missing))})"
    if not isinstance(state["history"], list):
        return f"{ckpt / RunDir.STATE}: damaged checkpoint state ('history' is not a list)"
    try:
        check_adapter(ckpt / RunDir.ADAPTER)
    except VrpError as e:
        return str(e)
    rank_files = sorted(p.name for p in ckpt.glob("rng-rank*.pt"))
    for name in (*TORCH_FILES, *rank_files):
        try:
            with zipfile.ZipFile(ckpt / name) as z:
                z.namelist()
        except FileNotFoundError:
            return f"{ckpt / name}: missing"
        except (zipfile.BadZipFile, OSError) as e:
            return f"{ckpt / name}: damaged ({first_line(e)})"
    return None


def resume_checkpoint(run: RunDir) -> tuple[Path | None, list[str]]:
    """`(the newest complete checkpoint that passes checkpoint_problem, or None; the problems of the newer ones
    passed over, newest first)`: a resume falls back past damaged checkpoints to the newest sound one."""
    skipped: list[str] = []
    for ckpt in reversed(run.checkpoints()):
        problem = checkpoint_problem(run, ckpt)
        if problem is None:
            return ckpt, skipped
        skipped.append(problem)
    return None, skipped


def _read_checkpoint(ckpt: Path) -> dict[str, Any]:
    """The contents of checkpoint `ckpt`, tensors on the CPU: adapter weights (PEFT file keys), optimizer and
    scheduler states, the RNG states of ranks 0, 1, ... and state.json. Raises VrpError naming a file that cannot be
    read (damage that `checkpoint_problem` does not see, such as bytes changed inside an archive)."""
    import torch
    from safetensors.torch import load_file

    def read(name: str, **kw: Any) -> Any:
        try:
            if name.endswith(".safetensors"):
                return load_file(str(ckpt / name))
            return torch.load(ckpt / name, weights_only=False, **kw)
        except FileNotFoundError:
            raise VrpError(f"{ckpt / name}: missing") from None
        except Exception as e:  # noqa: BLE001 - unpickling and zip errors come in many types
            raise VrpError(f"{ckpt / name}: damaged ({type(e).__name__}: {first_line(e)})") from None

    rngs, rank = [read("rng.pt")], 1
    while (ckpt / f"rng-rank{rank}.pt").is_file():
        rngs.append(read(f"rng-rank{rank}.pt"))
        rank += 1
    return {"adapter": read(f"{RunDir.ADAPTER}/{WEIGHTS}"), "optimizer": read("optimizer.pt", map_location="cpu"),
            "scheduler": read("scheduler.pt"), "rng": rngs, "state": RunDir(ckpt.parent.parent).checkpoint_state(ckpt)}


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
    try:
        disk = run.checkpoint_state(ckpt)
        if not isinstance(disk.get("val_nll"), (int, float)):
            raise VrpError(f"{ckpt / RunDir.STATE}: damaged checkpoint state ('val_nll' is {disk.get('val_nll')!r})")
    except VrpError as e:  # the step checkpoint's own record stands; a better validation replaces the damaged one
        print(f"warning: {e}; the best checkpoint is taken from the resumed checkpoint's record", file=sys.stderr)
        return saved
    if saved is None or disk["val_nll"] < saved["val_nll"]:
        return {"step": disk["step"], "val_nll": disk["val_nll"]}
    return saved
