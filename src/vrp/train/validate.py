"""Validation during training: mean NLL per comment token of the validation rows, without gradients.

Knows: how packed rows are scored for validation (shared-prefix packed, or one comment per row for a model that
vrp cannot shared-prefix mask, `vrp.layer_masks`; in micro-batches of the training batch size, under the run's
autocast), and that NLL is the summed loss over all comment tokens (and their end-of-turn
tokens) divided by their number, perplexity = exp(NLL).
In a launched run the micro-batches are shared out among the processes and the sums all-reduced.
Does not know: where the rows come from (`vrp.train.setup`) or when validation runs (`vrp.train.loop`).
"""
from __future__ import annotations

import math
from typing import Any

from vrp.loss import loss_sum
from vrp.packing import collate, micro_batches
from vrp.precision import autocast_ctx


def evaluate_nll(model: Any, rows: list[Any], pad_id: int, prec: Any, batch_size: int = 4,
                 progress: bool = False, dist: Any = None, mode: str = "shared_prefix") -> dict[str, float]:
    """`{nll, perplexity, tokens}` over `rows`: mean NLL per comment token (nats), exp(NLL) (capped at exp(50)) and
    the number of target tokens; the model's train/eval mode is restored afterwards. `mode`: the packing the rows
    were made with (`vrp.packing.MODES`; 'none' for a model vrp cannot shared-prefix mask, `vrp.layer_masks`).

    In a launched run (`dist`, `vrp.train.distributed.Dist`) every process must call it: each scores its share of
    the micro-batches (the same number of forward calls on every process, a short share repeating a batch that is
    not counted) and the summed NLL and token counts are all-reduced, so the result is that of one process."""
    import torch
    from tqdm.auto import tqdm

    batches = micro_batches(rows, batch_size)
    mine, calls = dist.share(batches) if dist is not None else (batches, len(batches))
    total, n = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast_ctx(prec):
        for i in tqdm(range(calls), desc="validation", unit="batch", leave=False, disable=not progress):
            b = mine[i] if i < len(mine) else batches[0]
            batch = {k: v.to(prec.device) if hasattr(v, "to") else v
                     for k, v in collate(b, pad_id, mode).items()}
            s, k = dist.loss(model, batch) if dist is not None else loss_sum(model, batch)
            if i < len(mine):
                total += float(s)
                n += int(k)
    model.train(was_training)
    if dist is not None:
        total, n = dist.all_sum([total, n])
        n = int(n)
    nll = total / max(n, 1)
    return {"nll": nll, "perplexity": math.exp(min(nll, 50.0)), "tokens": n}
