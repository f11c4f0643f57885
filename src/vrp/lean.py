"""Memory-lean LoRA training: what a PEFT LoRA model keeps for backward, cut without changing the maths.

Knows: the sources of waste in a training step of a PEFT LoRA model under bf16 autocast, measured with
`vrp bench train --memory` (see `vrp.bench.memory`), and how to remove them:
- PEFT casts each LoRA layer's input to the adapter's dtype (fp32) before the dropout, so every layer input gets an
  fp32 copy and autocast then makes a bf16 copy of that for `lora_A`; under autocast the matmul runs in bf16
  anyway, so `keep_lora_inputs_in_compute_dtype` turns PEFT's cast off (`cast_input_dtype_enabled`) and the LoRA
  path reads the layer input itself;
- `nn.Dropout` on the LoRA input stores its scaled noise (one number per input element, for each of the 7 LoRA
  layers of a decoder layer) and hands `lora_A` a new tensor, which `lora_A` stores as well.
  `fuse_lora_dropout` replaces dropout + `lora_A` by one autograd function (`DropoutLinear`) that stores only the
  layer input (shared with the other layers reading it) and a seed, and regenerates the keep-mask from the seed in
  backward (Bernoulli(1 - p) keep, scale 1/(1 - p), as `nn.Dropout`, with p rounded to 1/32768; the seed is drawn
  from torch's default generator, so a run stays a function of its seed and resumes exactly);
- Llama-style RMSNorm (`x * rsqrt(mean(x^2) + eps)` in fp32, cast back, times the weight) keeps an fp32 copy of
  its input for backward; `LeanRMSNorm` keeps the input in its own dtype and the fp32 reciprocal RMS (one number
  per token) and recomputes the rest in backward;
- a SwiGLU MLP (`down(silu(gate(x)) * up(x))`) keeps gate(x), silu(gate(x)) and up(x) for the product's backward;
  `SwiGLU` keeps gate(x) and up(x) and recomputes silu in backward;
- the LM head's logits (see `vrp.loss`, chunked there).
The norm and MLP replacements are applied to a module only when its own forward and the replacement agree on a
random input (`_agrees`), so a model whose norm or MLP differs (Gemma's `1 + weight`, GELU MLPs) keeps its own.
Does not know: which model is loaded or how it is trained (`vrp.model`, `vrp.train`).

Drawing the mask costs about half of what `nn.Dropout`'s noise costs on a CPU, twice per step (forward and
backward); still, dropout on the inputs of all 7 LoRA layers of every decoder layer is a large share of a CPU
step's time (every input element is drawn, masked and scaled twice): with `lora_dropout` 0 there is no mask at all
(PEFT then uses `nn.Identity`).
"""
from __future__ import annotations

import types
from typing import Any

import torch


def keep_probability(p: float) -> float:
    """The keep probability `_keep_mask` draws with for dropout probability `p`: 1 - p rounded to 1/32768."""
    return 1.0 - round(p * 32768) / 32768


def _keep_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Bool keep-mask of x's shape, a pure function of `seed`: True with probability `keep_probability(p)`.

    Four 15-bit uniform numbers come from each 64-bit draw (`random_()` fills int64 with 63 random bits; each
    16-bit quarter without its top bit is uniform on [0, 32768)), about twice as fast on a CPU as one `torch.rand`
    float per element."""
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(generator=gen)
    return ((bits.view(torch.int16)[:n] & 0x7FFF) >= round(p * 32768)).view(x.shape)


class DropoutLinear(torch.autograd.Function):
    """`y = dropout(x, p) @ weight.T` storing x (not a dropped copy) and the mask's seed.

    x: (..., in) in the compute dtype (bf16 under autocast); weight: (out, in), typically fp32 (a LoRA A matrix),
    used in x's dtype; returns (..., out) in x's dtype. The weight's gradient is returned in its own dtype.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, p: float, seed: int) -> torch.Tensor:
        scale = 1.0 / keep_probability(p)
        dropped = torch.where(_keep_mask(x, p, seed), x * scale, 0)
        ctx.save_for_backward(x, weight)
        ctx.p, ctx.seed = p, seed
        return torch.nn.functional.linear(dropped, weight.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        scale = 1.0 / keep_probability(ctx.p)
        keep = _keep_mask(x, ctx.p, ctx.seed)
        grad = grad.to(x.dtype)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.where(keep, (grad @ weight.to(x.dtype)) * scale, 0)
        if ctx.needs_input_grad[1]:
            dropped = torch.where(keep, x * scale, 0)
            gw = (grad.reshape(-1, grad.shape[-1]).T @ dropped.reshape(-1, x.shape[-1])).to(weight.dtype)
        return gx, gw, None, None


class LeanRMSNorm(torch.autograd.Function):
    """`weight * (x * rsqrt(mean(x^2, -1) + eps)).to(x.dtype)` with the mean in fp32, as Llama's RMSNorm, storing
    x in its own dtype and the fp32 reciprocal RMS (..., 1) instead of an fp32 copy of x. x: (..., H); weight (H,)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, rstd = ctx.saved_tensors
        normed = x.float() * rstd                                        # (..., H) fp32
        gx = gw = None
        if ctx.needs_input_grad[0]:
            dn = (grad * weight).to(x.dtype).float()                       # through the cast back to x's dtype
            gx = (rstd * (dn - normed * (dn * normed).mean(-1, keepdim=True))).to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = (grad * normed.to(x.dtype)).reshape(-1, grad.shape[-1]).sum(0).to(weight.dtype)
        return gx, gw, None


class SwiGLU(torch.autograd.Function):
    """`silu(gate) * up`, storing gate and up (not silu(gate)); gate, up: (..., I) of one dtype."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return torch.nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        gate, up = ctx.saved_tensors
        g = gate.float()
        sig = torch.sigmoid(g)
        gg = gu = None
        if ctx.needs_input_grad[0]:
            gg = (grad.float() * up.float() * sig * (1 + g * (1 - sig))).to(gate.dtype)
        if ctx.needs_input_grad[1]:
            gu = (grad * torch.nn.functional.silu(gate)).to(up.dtype)
        return gg, gu


def _norm_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return LeanRMSNorm.apply(x, self.weight, self.vrp_eps)


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(SwiGLU.apply(self.gate_proj(x), self.up_proj(x)))


def _agrees(module: Any, forward: Any, width: int) -> bool:
    """Whether `forward` bound to `module` gives the module's own output on a random (2, 3, width) input (in the
    module's parameter dtype, no gradients, tolerance 1e-3 relative: bf16 rounding). The dtype is that of the first
    floating-point parameter (4-bit weights are stored as uint8 bytes, bitsandbytes' `Params4bit`)."""
    p = next((q for q in module.parameters() if q.is_floating_point()), None)
    if p is None:
        return False
    x = torch.randn(2, 3, width, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
    was_training = module.training
    module.eval()  # no dropout in the comparison
    try:
        with torch.no_grad():
            want, got = module(x), types.MethodType(forward, module)(x)
    except Exception:  # a module of another shape or signature: leave it alone
        return False
    finally:
        module.train(was_training)
    return want.shape == got.shape and bool(torch.allclose(want.float(), got.float(), rtol=1e-3, atol=1e-5))


def lean_norms_and_mlps(model: Any) -> tuple[int, int]:
    """Give every Llama-style RMSNorm the `LeanRMSNorm` forward and every SwiGLU MLP the `SwiGLU` product, where
    `_agrees` confirms the module computes the same. Returns (norms, MLPs) changed."""
    norms = mlps = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        eps = getattr(m, "variance_epsilon", getattr(m, "eps", None))
        if (type(m).__name__.endswith("RMSNorm") and isinstance(w, torch.nn.Parameter) and w.ndim == 1
                and isinstance(eps, float)):
            m.vrp_eps = eps
            if _agrees(m, _norm_forward, w.shape[0]):
                m.forward = types.MethodType(_norm_forward, m)
                norms += 1
        elif all(hasattr(m, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            width = getattr(getattr(m.gate_proj, "base_layer", m.gate_proj), "in_features", None)
            if width and _agrees(m, _mlp_forward, width):
                m.forward = types.MethodType(_mlp_forward, m)
                mlps += 1
    return norms, mlps


def _dropout_linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`forward` of a LoRA A layer whose dropout was fused into it (bound to the layer by `fuse_lora_dropout`)."""
    p = self.vrp_dropout_p
    if self.training and p > 0 and torch.is_grad_enabled():
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
        return DropoutLinear.apply(x, self.weight, p, seed)
    if self.training and p > 0:  # training mode without gradients: plain dropout
        x = torch.nn.functional.dropout(x, p, True)
    return torch.nn.functional.linear(x, self.weight)


def lora_layers(model: Any) -> list[Any]:
    """PEFT LoRA layers of `model` (modules with `lora_A`, `lora_B` and `lora_dropout` dicts)."""
    return [m for m in model.modules()
            if all(isinstance(getattr(m, a, None), torch.nn.ModuleDict) for a in ("lora_A", "lora_B", "lora_dropout"))]


def keep_lora_inputs_in_compute_dtype(model: Any) -> int:
    """Turn off PEFT's cast of each LoRA layer's input to the adapter dtype (use only under autocast, where the
    LoRA matmuls run in the autocast dtype anyway). Returns the number of layers changed."""
    n = 0
    for m in lora_layers(model):
        if hasattr(m, "cast_input_dtype_enabled"):
            m.cast_input_dtype_enabled = False
            n += 1
    return n


def fuse_lora_dropout(model: Any) -> int:
    """Replace each LoRA layer's `nn.Dropout` + `lora_A` (a bias-free `nn.Linear`) by `DropoutLinear`: the dropout
    module becomes `nn.Identity` and `lora_A`'s forward applies the dropout itself. Parameter names, the state dict
    and the saved adapter are unchanged. Returns the number of adapters fused."""
    n = 0
    for m in lora_layers(model):
        for name, drop in list(m.lora_dropout.items()):
            a = m.lora_A[name] if name in m.lora_A else None
            if (not isinstance(drop, torch.nn.Dropout) or drop.p <= 0 or type(a) is not torch.nn.Linear
                    or a.bias is not None):
                continue
            a.vrp_dropout_p = float(drop.p)
            a.forward = types.MethodType(_dropout_linear_forward, a)
            m.lora_dropout[name] = torch.nn.Identity()
            n += 1
    return n


def make_lean(model: Any, autocast: bool) -> dict[str, int]:
    """Apply the cuts of this module to a PEFT LoRA model for training: dropout fused into `lora_A`, lean RMSNorms
    and SwiGLU products always, the input cast turned off when `autocast` (the run computes under
    `torch.autocast`). Returns counts per change."""
    norms, mlps = lean_norms_and_mlps(model)
    return {"fused_dropout": fuse_lora_dropout(model), "norms": norms, "mlps": mlps,
            "uncast_inputs": keep_lora_inputs_in_compute_dtype(model) if autocast else 0}
