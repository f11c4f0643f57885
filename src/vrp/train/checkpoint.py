"""Training checkpoints: adapter, optimizer, scheduler, RNG states and data position, written atomically.

Knows: what a checkpoint holds — `step-000050/{adapter/, optimizer.pt, scheduler.pt, rng.pt, state.json}` under
the run dir's checkpoints (`vrp.artifacts.RunDir.checkpoint_dir`); a checkpoint directory is first written as
`.tmp-step-...` and renamed when complete (with its state.json, which makes it count as complete for
`RunDir.checkpoints`), so a kill never leaves a checkpoint that a resume would trust. Keeps the newest `keep`.
Does not know: how training proceeds.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from vrp.artifacts import RunDir
from vrp.errors import VrpError


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


def save_checkpoint(run: RunDir, step: int, model: Any, optimizer: Any, scheduler: Any,
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` of `run` (`state` goes to its state.json with the step) and prune the older complete
    ones beyond `keep` (0 = keep all). Returns its path."""
    import torch

    final = run.checkpoint_dir(step)
    tmp = final.with_name(f".tmp-{final.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / RunDir.ADAPTER)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / RunDir.STATE).write_text(json.dumps(dict(state, step=step), indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in run.checkpoints()[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def load_checkpoint(ckpt: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Load adapter weights, optimizer, scheduler and RNG states from `ckpt`; return its state dict."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = ckpt / RunDir.ADAPTER / "adapter_model.safetensors"
    if not weights.is_file():
        raise VrpError(f"{ckpt}: checkpoint has no adapter weights")
    set_peft_model_state_dict(model, load_file(str(weights)))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(ckpt / "rng.pt", weights_only=False))
    return json.loads((ckpt / RunDir.STATE).read_text())
