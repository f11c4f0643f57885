"""Model FLOPs of LoRA training steps and the matmul peak of this machine, for the MFU figures of `vrp bench train`.

Knows: how many floating-point operations (FLOP; a multiply-add = 2 FLOP) one training step of a decoder-only
transformer with a frozen base and LoRA adapters needs, counted two ways, and how to measure the achievable dense
matmul rate (FLOP/s) of this machine. Does not know: data, packing or timing of training (see `vrp.bench.train`).

Terms. MFU (model FLOPs utilisation, Chowdhery et al. 2022, "PaLM", appendix B) = model FLOPs per second achieved
/ peak FLOP/s of the hardware. Here the peak is *measured*, not a datasheet number: the best rate of a 4096x4096
matmul in the training dtype (bf16 when autocast is bf16, else fp32).

Formula (per token, matmul FLOPs only; embedding lookups, norms, softmax, activations and the optimizer are left
out, as in Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1, table 1):
- forward: 2 FLOP per weight of every linear layer the token passes (Kaplan: C_forward ~ 2N), so
  2*N_body + 2*N_lora, plus attention 2*d_attn*keys for Q.K^T and 2*d_attn*keys for A.V per layer;
- backward: a linear layer's gradient with respect to its input costs another 2 FLOP per weight, its gradient
  with respect to the weight 2 more (hence the usual "backward = 2x forward", 6N in total). Frozen base weights
  need only the input gradient: 2*N_body; trainable LoRA weights need both: 4*N_lora. Attention backward costs 2x
  its forward (gradients of both operands of each matmul): 8*d_attn*keys per layer;
- total per token: 4*N_body + 6*N_lora + 12*L*d_attn*keys(t) (PaLM's 6N + 12*L*H*Q*T with the base frozen);
- the LM head (N_head = d_model * vocab, frozen) costs 2*N_head forward + 2*N_head backward per position where
  it is applied.
N_body: weights of the linear layers inside the decoder layers; N_lora: trainable LoRA weights (A and B);
L: layers; d_attn: heads * head_dim of the queries; keys(t): key positions query t is scored against.

Two counts:
- useful FLOPs: the work of training every comment alone after its prompt (per-example equivalent): a sequence
  of n = prompt + comment tokens, causal attention (keys(t) = t + 1, so sum = n(n+1)/2; PaLM counts all T keys,
  we count only the keys a token may see), LM head at the comment's targets only. The same number for all packing
  modes training the same comments, so "useful MFU" ratios equal throughput ratios; shared-prefix packing does
  less work for the same useful FLOPs, so its useful MFU can exceed what the hardware does.
- executed FLOPs: what the kernels run: every padded position of the (B, T) batch through the layers; attention
  on all T x T query-key pairs (torch 2.13's CPU SDPA with an explicit mask skips no masked blocks: measured, a
  boolean causal mask costs as much as no mask and ~1.8x `is_causal=True`), only T(T+1)/2 when transformers can
  pass `is_causal` (no padding and no 4D mask), and p(p+1)/2 + (T-p)T with `split_sdpa` (`vrp.attention`: the
  causal kernel on the first p queries, whose mask rows are plain causal); the LM head where it is applied (vrp:
  target positions; TRL 1.16's fused head on a CPU: every position but the last of each row).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from vrp.loss import decoder_and_head


@dataclass(frozen=True)
class FlopDims:
    """Sizes the FLOP count needs. n_layers: L; d_attn: query heads * head_dim; n_body: weights of the decoder
    layers' linear layers (frozen); n_head: LM-head weights (frozen); n_lora: trainable LoRA weights."""

    n_layers: int
    d_attn: int
    n_body: int
    n_head: int
    n_lora: int

    def per_token(self) -> float:
        """FLOP per token through the layers (forward + backward), attention excluded: 4*N_body + 6*N_lora."""
        return 4.0 * self.n_body + 6.0 * self.n_lora

    def per_key(self) -> float:
        """FLOP per scored (query, key) pair, forward + backward, all layers: 12 * L * d_attn."""
        return 12.0 * self.n_layers * self.d_attn

    def per_head_position(self) -> float:
        """FLOP per position where the frozen LM head is applied (forward + input gradient): 4 * N_head."""
        return 4.0 * self.n_head


def dims_from_model(model: Any) -> FlopDims:
    """`FlopDims` of a (PEFT-wrapped) causal LM: linear weights counted from the modules themselves.

    N_body sums `weight.numel()` of every `torch.nn.Linear` base layer inside the decoder (LoRA-wrapped layers are
    counted by their base layer); N_lora sums the trainable parameters; N_head is the output embedding's size.
    """
    import torch

    decoder, head = decoder_and_head(model)
    n_body = 0
    for name, mod in decoder.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lora_" not in name:
            n_body += mod.weight.numel()
    cfg = decoder.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FlopDims(n_layers=cfg.num_hidden_layers, d_attn=cfg.num_attention_heads * head_dim, n_body=n_body,
                    n_head=head.weight.numel(), n_lora=n_lora)


def useful_flops(dims: FlopDims, prompt_len: int, comment_len: int) -> float:
    """Useful FLOPs of training one comment (tokens incl. EOS) after its prompt (tokens), as a lone causal row:
    n*(4*N_body + 6*N_lora) + 12*L*d_attn*n(n+1)/2 + 4*N_head*comment_len, n = prompt_len + comment_len."""
    n = prompt_len + comment_len
    return n * dims.per_token() + dims.per_key() * n * (n + 1) / 2 + dims.per_head_position() * comment_len


def executed_flops(dims: FlopDims, row_lengths: list[int], head_positions: int, dense_attention: bool,
                   causal_prefix: int = 0, pairs: float | None = None) -> float:
    """FLOPs a (B, T) batch executes: B*T positions through the layers (pads included), B*T*T scored pairs
    (`dense_attention`, an explicit mask) or B*T(T+1)/2 (causal kernel), and `head_positions` LM-head positions.
    With `causal_prefix` p > 0 and an explicit mask (`vrp.attention`'s `split_sdpa`), the first p queries run the
    causal kernel and the rest the masked one: B*(p(p+1)/2 + (T-p)*T) pairs.

    `pairs`, when given, is the number of scored pairs itself (`vrp.attention.scored_pairs`: its segment path
    scores each comment against the prompt and itself only).

    row_lengths: real tokens of each row (T = the longest)."""
    b, t = len(row_lengths), max(row_lengths)
    if pairs is None:
        if dense_attention and causal_prefix > 0:
            pairs = b * (causal_prefix * (causal_prefix + 1) / 2 + (t - causal_prefix) * t)
        else:
            pairs = b * t * t if dense_attention else b * t * (t + 1) / 2
    return b * t * dims.per_token() + dims.per_key() * pairs + dims.per_head_position() * head_positions


def matmul_peak(dtype_name: str = "bfloat16", n: int = 4096, repeats: int = 5) -> float:
    """Measured dense matmul rate in FLOP/s: best of `repeats` timed `torch.mm` of two n x n matrices (2*n^3 FLOP
    each) in `dtype_name` (`bfloat16` or `float32`), after one untimed call. Uses torch's current thread count."""
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best
