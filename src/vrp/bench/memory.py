"""Memory profile of one training step: where the peak goes, by part, decoder layer and kind of operation.

Knows: how to break the memory of one vrp training step (forward, backward, AdamW step) into
- weights: the frozen base model's parameters and buffers, and the LoRA weights;
- LoRA gradients and AdamW's state (exp_avg, exp_avg_sq), read from the optimizer after the step;
- tensors saved for backward, attributed with `torch.autograd.graph.saved_tensors_hooks` (what autograd keeps),
  forward hooks on every module (which module was running: decoder layer and module path) and a
  `TorchDispatchMode` (which aten op created each saved storage, so that dtype casts are told apart). Each storage
  is counted once (q/k/v projections share their input), parameters are not counted. Kinds (`KINDS`): attention
  (inside `self_attn`, outside its LoRA layers: rotary, SDPA inputs and output), MLP, norms, LoRA inputs (what
  `lora_A`/`lora_B` keep beyond what the layer already kept), LoRA dropout copies, embeddings, logits and loss (the
  LM head and cross-entropy), other (residual stream, rotary tables); and, across kinds, how much of it are dtype
  casts (copies of a tensor in another dtype: autocast's bf16 copies, PEFT's fp32 copies, the norms' fp32 copies);
- the step's peak of tensor bytes (`vrp.train.memory.allocated_peak`) and what was live at the peak besides the
  saved tensors (transient: backward buffers, a logits chunk, attention workspace), and the process's resident set
  (RSS) before the step and at its peak (`VmHWM`, reset before the step through /proc/self/clear_refs on Linux).
The profiled step is the second one (the first allocates AdamW's state). Saved tensors of activation-checkpointed
regions are not seen by the hooks (checkpointing keeps only their inputs).
Does not know: how the batch was chosen (`vrp.bench.train`), how results are laid out in BENCHMARKS.md
(`format_profile` renders one profile as a Markdown table).
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from vrp.loss import loss_sum
from vrp.precision import autocast_ctx
from vrp.procmem import reset_peak_rss, resident_bytes, rss_high_water_bytes
from vrp.train.memory import allocated_peak

KINDS = ("attention", "MLP", "norms", "LoRA inputs", "LoRA dropout copies", "embeddings", "logits and loss", "other")
CAST_OPS = ("_to_copy", "to", "_autocast_to_reduced_precision", "_autocast_to_full_precision")
LAYER = re.compile(r"\.layers\.(\d+)\.")


def _kind(path: str, module: Any) -> str:
    """The kind (`KINDS`) of a tensor saved while module `module` (named `path`, '' outside the model) ran."""
    if "lora_dropout" in path:
        return "LoRA dropout copies"
    if ".lora_A" in path or ".lora_B" in path:
        return "LoRA inputs"
    if type(module).__name__.lower().endswith("norm"):
        return "norms"
    if ".self_attn" in path or ".attention" in path:
        return "attention"
    if ".mlp" in path or ".feed_forward" in path:
        return "MLP"
    if "embed" in path:
        return "embeddings"
    if "lm_head" in path or not LAYER.search(path + "."):
        return "logits and loss" if "lm_head" in path or module is None else "other"
    return "other"


class SavedTensorTracker:
    """Attribute the storages autograd saves during a forward to (decoder layer, kind). Use as a context manager
    around the forward; `by_layer` maps layer index (-1 outside the decoder layers) to {kind: bytes}; `casts` maps
    kind to the bytes of those storages that a dtype conversion created."""

    def __init__(self, model: Any) -> None:
        import torch

        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        self.skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        self.stack: list[Any] = []
        self.created: dict[int, bool] = {}   # storage ptr -> made by a dtype cast
        self.seen: set[int] = set()
        self.by_layer: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.casts: dict[str, int] = defaultdict(int)
        self._handles: list[Any] = []
        self._torch = torch

    def _pack(self, t: Any) -> Any:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        ptr = st.data_ptr()
        if ptr in self.skip or ptr in self.seen or ptr == 0:
            return t
        self.seen.add(ptr)
        mod = self.stack[-1] if self.stack else None
        path = "." + self.names.get(mod, "") if mod is not None else ""
        m = LAYER.search(path + ".")
        kind = _kind(path, mod)
        self.by_layer[int(m[1]) if m else -1][kind] += st.nbytes()
        if self.created.get(ptr, False):
            self.casts[kind] += st.nbytes()
        return t

    def __enter__(self) -> SavedTensorTracker:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        tracker, torch = self, self._torch

        class Creators(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                inputs = [a for a in tree_leaves(args) if isinstance(a, torch.Tensor)]
                cast = func.overloadpacket.__name__ in CAST_OPS and bool(inputs)
                known = {a.untyped_storage().data_ptr() for a in inputs}
                for t in tree_leaves(out):
                    ptr = t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) else None
                    if ptr is not None and ptr not in known:   # a new storage, not a view of an input
                        tracker.created[ptr] = bool(cast and t.dtype != inputs[0].dtype)
                return out

        def enter(m: Any, args: Any) -> None:
            self.stack.append(m)

        def leave(m: Any, args: Any, out: Any) -> None:   # returns None: the output stays as it is
            self.stack.pop()

        for mod in self.model.modules():
            self._handles.append(mod.register_forward_pre_hook(enter))
            self._handles.append(mod.register_forward_hook(leave, always_call=True))
        self._saved = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._mode = Creators()
        self._saved.__enter__()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
        self._saved.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def totals(self) -> dict[str, int]:
        """Bytes per kind over all layers."""
        out = {k: 0 for k in KINDS}
        for kinds in self.by_layer.values():
            for k, n in kinds.items():
                out[k] += n
        return out


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def profile_step(model: Any, batch: dict[str, Any], prec: Any, optimizer: Any, max_grad_norm: float = 1.0
                 ) -> dict[str, Any]:
    """Profile one training step of `model` (PEFT LoRA, train mode) on `batch` (from `vrp.packing.collate`, on
    the device) with `optimizer`: a warm-up step, then the profiled one. Returns a JSON-ready dict, bytes
    everywhere: `weights`, `lora_weights`, `lora_grads`, `optimizer_state`, `saved` ({kind: bytes}), `saved_per_layer`
    ([{kind: bytes}] per decoder layer), `saved_total`, `step_peak` (tensor bytes the step allocated at its peak),
    `saved_casts` ({kind: bytes} of dtype-cast copies among the saved), `transient` (step_peak - saved_total -
    lora_grads, at least 0), `checkpointing` (gradient checkpointing on: the hooks do not see what it keeps),
    `rss_before`, `peak_rss`, `layers`, `tokens` (B*T positions), `rows`, `row_tokens`, `targets`."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    tracker = SavedTensorTracker(model)

    def step(track: bool) -> None:
        with autocast_ctx(prec):
            if track:
                with tracker:
                    loss, n = loss_sum(model, batch)
            else:
                loss, n = loss_sum(model, batch)
        (loss / max(n, 1)).backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step(False)
    reset_peak_rss()
    before = resident_bytes()
    peak = allocated_peak(lambda: step(True), prec.device)
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim > 0]
    saved = tracker.totals()
    layers = sorted(k for k in tracker.by_layer if k >= 0)
    lora = _tensor_bytes(params)
    frozen = _tensor_bytes([p for p in model.parameters() if not p.requires_grad]) + _tensor_bytes(model.buffers())
    b, t = batch["input_ids"].shape
    total = sum(saved.values())
    return {"weights": frozen, "lora_weights": lora, "lora_grads": lora, "optimizer_state": _tensor_bytes(state),
            "saved": saved, "saved_total": total, "saved_casts": dict(tracker.casts),
            "saved_per_layer": [{k: int(v) for k, v in tracker.by_layer[i].items()} for i in layers],
            "step_peak": int(peak), "transient": max(0, int(peak) - total - lora), "rss_before": before,
            "checkpointing": any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()),
            "peak_rss": rss_high_water_bytes(), "layers": len(layers), "rows": int(b), "row_tokens": int(t),
            "tokens": int(b * t), "targets": int(batch["num_targets"])}


def _mib(n: float) -> str:
    """Bytes as MiB: one decimal below 10 MiB, none above."""
    return f"{n / 2 ** 20:.1f}" if n < 10 * 2 ** 20 else f"{n / 2 ** 20:,.0f}"


def format_profile(p: dict[str, Any], label: str) -> str:
    """One profile (`profile_step`) as a Markdown table: MiB, MiB per decoder layer and bytes per token and layer
    (saved kinds), the MiB of dtype-cast copies among them, and the share of the peak of tensors (weights +
    optimizer state + the step's peak)."""
    mib = 2 ** 20
    layers, tokens = max(p["layers"], 1), max(p["tokens"], 1)
    top = p["weights"] + p["lora_weights"] + p["optimizer_state"] + p["step_peak"]
    casts = p.get("saved_casts", {})
    lines = [f"{label}: {p['rows']} rows x {p['row_tokens']} tokens ({p['targets']} targets), {p['layers']} "
             f"decoder layers", "",
             "| part | MiB | MiB per layer | bytes per token and layer | of which dtype-cast copies, MiB "
             "| share of peak |", "|---|---|---|---|---|---|"]

    def row(name: str, n: float, per_layer: bool = False, cast: float | None = None) -> None:
        extra = f"{n / layers / mib:.1f} | {n / layers / tokens:,.0f}" if per_layer else " | "
        shown = "" if cast is None else _mib(cast)
        lines.append(f"| {name} | {_mib(n)} | {extra} | {shown} | {100 * n / max(top, 1):.1f}% |")

    row("weights (frozen base)", p["weights"])
    row("LoRA weights", p["lora_weights"])
    row("AdamW state", p["optimizer_state"])
    row("LoRA gradients", p["lora_grads"])
    for k in KINDS:
        if p["saved"].get(k):
            row(f"saved: {k}", p["saved"][k], True, casts.get(k, 0))
    row("saved for backward, total", p["saved_total"], True, sum(casts.values()))
    row("layer inputs kept by activation checkpointing, recomputed layer, transient at the peak"
        if p.get("checkpointing") else "transient at the peak (backward buffers, logits chunk, workspace)",
        p["transient"])
    row("peak of tensors (weights + optimizer + step)", top)
    lines += ["", f"Process RSS: {p['rss_before'] / mib:,.0f} MiB before the step, peak {p['peak_rss'] / mib:,.0f} "
                  f"MiB (Python, libraries and allocator slack on top of the tensors)."]
    return "\n".join(lines)
