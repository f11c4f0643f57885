"""The shared-prefix self-check of a training run: packed log-probs against the per-example forward, on the real model.

Knows: users bring models that no test has seen, so before its first step a shared-prefix run scores the comment
tokens of its own fullest row (`CHECK_ROWS` rows of at most `CHECK_COMMENTS` comments each, the rows with the most
comments first, then the longest, so the longest prompts reach past a sliding window) twice with the model as loaded (LoRA attached, eval mode, the run's autocast and
attention implementation): packed (`vrp.packing.collate`, shared-prefix masks per layer type) and per example (each
prompt + context + comment alone in a row of mode `none`, whose causal / sliding / chunked masks transformers builds
itself). It records `{max_abs_diff, mean_abs_diff, tolerance, precision, dtype, n_tokens, n_comments}`
(`metrics.json`'s `packing_check`) and stops the run with a VrpError when the largest difference of a per-token
log-prob exceeds the tolerance for the compute dtype (`TOLERANCE`, nats). Measured on this project's CPU with the
bundled SmolLM2-135M (30 layers; 2 rows of 8 comments behind 512-token prompts, 108 comment tokens; exact masks vs
a mask that lets each comment see the comments before it):
- fp32: 1e-3. Exact masks differ only by float rounding of the same sums in another order: 1.8e-5 nats at most
  (tiny test models: < 1e-6); the leaking mask: 9.6 nats. 1e-3 is 50x above the rounding and 1/10,000 of the
  leaking mask's difference.
- fp16: 0.5. Rounding (11 significant bits): packed vs alone 0.042, and two exact kernels (eager vs sdpa) on the
  same rows 0.060 nats at most; 8x margin.
- bf16: 3.0. bf16 keeps 8 significant bits, 8x coarser than fp16, and the differences grow through the layers:
  packed vs alone 0.56 nats at most (mean 0.05), eager vs sdpa on the same packed rows 1.09 (mean 0.10); the
  leaking mask 9.7. 3.0 is about 3x the rounding seen: the bf16 check catches gross mask errors (a comment that
  sees other comments); the fp32 check, like the test suite's (`tests/test_packing*.py`, 1e-5), is the exact one,
  so `--precision fp32` checks a new model tightly.
Does not know: how the run is set up (`vrp.train.setup`), where metrics are written (`vrp.train.loop.finish`).
"""
from __future__ import annotations

from typing import Any

from vrp.errors import VrpError
from vrp.layer_masks import shared_prefix_problem
from vrp.loss import decoder_and_head, target_logprobs
from vrp.packing import Row, collate
from vrp.precision import autocast_ctx

CHECK_ROWS = 1  # one packed forward and CHECK_COMMENTS per-example ones before the first step
CHECK_COMMENTS = 3  # enough to see a comment attend to the ones before it, and positions restart twice
TOLERANCE = {"float32": 1e-3, "float16": 0.5, "bfloat16": 3.0}


def validation_packing(model: Any, packing: str) -> str:
    """The packing of a run's validation rows: 'shared_prefix' when vrp can mask the model exactly
    (`vrp.layer_masks.shared_prefix_problem`), else 'none'. Raises VrpError with the problem when the run itself is
    to be trained with `packing` 'shared_prefix' on such a model."""

    problem = shared_prefix_problem(decoder_and_head(model)[0])
    if problem is not None and packing == "shared_prefix":
        raise VrpError(problem)
    return "none" if problem is not None else "shared_prefix"


def check_rows(rows: list[Any]) -> list[Any]:
    """The rows the check scores: the `CHECK_ROWS` rows with the most comments (then the most tokens, then the
    first), each cut to its first `CHECK_COMMENTS` comments (`vrp.packing.Row`s, new objects)."""

    order = sorted(range(len(rows)), key=lambda i: (-rows[i].num_completions, -rows[i].num_tokens, i))
    out = []
    for i in order[:CHECK_ROWS]:
        r = rows[i]
        out.append(Row(r.prompt_ids, r.completions[:CHECK_COMMENTS], r.video_id,
                       r.contexts[:CHECK_COMMENTS] if r.contexts else []))
    return out


def packing_check(model: Any, rows: list[Any], pad_id: int, prec: Any) -> dict[str, Any]:
    """Compare per-token log-probs (nats) of the comments of `check_rows(rows)` packed vs per example.

    model: the causal LM (PEFT-wrapped or not); rows: shared-prefix rows (`vrp.packing.make_rows`); prec: the run's
    `vrp.precision.Precision` (autocast). Returns `{max_abs_diff, mean_abs_diff, tolerance, precision, dtype, n_tokens,
    n_comments}` (differences in nats; dtype: the compute dtype that picks the tolerance).
    Raises VrpError naming the model type, the difference and the tolerance when they disagree. The model's
    train/eval mode is restored afterwards.
    """
    import torch

    picked = check_rows(rows)
    decoder, _ = decoder_and_head(model)
    dtype = prec.autocast_dtype or decoder.get_input_embeddings().weight.dtype
    name = str(dtype).replace("torch.", "")
    tol = TOLERANCE.get(name, TOLERANCE["bfloat16"])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast_ctx(prec):
            packed = [target_logprobs(model, _to(collate([r], pad_id, "shared_prefix"), prec.device))
                      for r in picked]
            alone = [target_logprobs(model, _to(collate([Row(r.prompt_ids, [c], r.video_id, [r.context(j)])],
                                                        pad_id, "none"), prec.device))
                     for r in picked for j, c in enumerate(r.completions)]
    finally:
        model.train(was_training)
    a, b = torch.cat(packed).double().cpu(), torch.cat(alone).double().cpu()
    d = (a - b).abs()
    diff = float(d.max()) if a.numel() else 0.0
    result = {"max_abs_diff": diff, "mean_abs_diff": float(d.mean()) if a.numel() else 0.0, "tolerance": tol,
              "precision": prec.name, "dtype": name, "n_tokens": int(a.numel()),
              "n_comments": sum(len(r.completions) for r in picked)}
    if not diff <= tol:  # also NaN
        model_type = getattr(decoder.config, "model_type", None) or type(decoder).__name__
        raise VrpError(f"packing check failed for model type {model_type!r}: the log-probs of {result['n_tokens']} "
                       f"comment tokens in shared-prefix rows differ from the per-example forward by up to "
                       f"{diff:.3g} nats (tolerance {tol:g} at {name}), so vrp's shared-prefix masks are not exact "
                       f"for this model; train it with packing mode 'none' (--packing none)")
    return result


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
