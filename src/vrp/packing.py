"""Batching of (prompt, comments) videos for completion-only loss: per-example rows or shared-prefix packing.

Knows: how the comments of a video become rows (`make_rows`), and how rows become padded tensors with attention
masks, position ids and loss targets (`collate`).
Does not know: the forward pass and the loss (see `vrp.loss`), optimisers, gradient accumulation or data loading
(see `vrp.train`), nor how prompts and completions are tokenized (see `vrp.prompts`).

Two modes:
- `none`: one row per (video, comment) pair = prompt + completion, causal attention with a 2D padding mask built
  by transformers (the per-example baseline, as TRL's SFTTrainer with completion-only loss).
- `shared_prefix`: one row = `[prompt][comment 1 + EOS][comment 2 + EOS]...`. The prompt is causal among itself;
  every comment token sees the whole prompt and the earlier tokens of its own comment, never another comment;
  each comment's position ids restart at `len(prompt)`. Every comment therefore sees exactly the context it would
  see alone after the prompt, so the loss and its gradients equal the per-example ones (up to float rounding),
  while the prompt (hundreds to 1,000+ tokens) is run once per row instead of once per comment.

A completion may start with context tokens (`Row.contexts`, e.g. a tier marker, `vrp.tiers`): inputs that belong
to the completion's segment (its tokens attend to them, other completions never do) but are never targets; the
completion's first token is predicted from the context's last position instead of the prompt's. In both modes the
sequence of a completion is `prompt + context + completion`, so the exactness above holds with contexts too.

`collate` emits a boolean 4D mask (True = may attend, the form transformers' `sdpa_mask` builds);
`vrp.loss.model_attention_mask` converts it for the model's attention kernel. Padded query positions attend only
to themselves, so no softmax row is empty (no NaN); real tokens never see pads. A 4D mask costs B*T*T bytes
(bool; 4x that as the fp32 eager mask): 64 MiB for 4 rows of 4,096.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vrp.errors import VrpError
from vrp.prompts import EncodedVideo

MODES = ("none", "shared_prefix")
Batch = dict[str, Any]


@dataclass
class Row:
    """A unit of batching: one prompt followed by one or more completions.

    prompt_ids: (prompt_len,) token ids. completions: token ids of each comment, each ending with EOS.
    video_id: the video the row comes from (for error messages and bookkeeping).
    contexts: per completion, token ids that precede it as inputs without loss (a tier marker); [] (the default)
    means no completion has any, else one list (possibly empty) per completion.
    """

    prompt_ids: list[int]
    completions: list[list[int]] = field(default_factory=list)
    video_id: str = ""
    contexts: list[list[int]] = field(default_factory=list)

    def context(self, j: int) -> list[int]:
        """The context tokens of completion `j` ([] when it has none)."""
        return self.contexts[j] if self.contexts else []

    @property
    def num_completions(self) -> int:
        return len(self.completions)

    @property
    def num_tokens(self) -> int:
        """Length of the row in tokens: prompt + all contexts + all completions."""
        return len(self.prompt_ids) + sum(len(c) for c in self.completions) + sum(len(c) for c in self.contexts)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise VrpError(f"packing mode: choose from {MODES}, got {mode!r}")


class LazyRow:
    """A `Row` whose token ids stay in its video's source (a `vrp.token_cache.EncodedSplit`, memory-mapped) until
    they are read: the row is video `index` of `source`, comments `start` to `stop`; `num_tokens` and `video_id`
    are kept. Reading `prompt_ids`, `completions` or `contexts` reads the video (the source keeps the last one)."""

    __slots__ = ("source", "index", "start", "stop", "num_tokens", "video_id")

    def __init__(self, source: Any, index: int, start: int, stop: int, num_tokens: int, video_id: str) -> None:
        self.source, self.index, self.start, self.stop = source, index, start, stop
        self.num_tokens, self.video_id = num_tokens, video_id

    @property
    def prompt_ids(self) -> list[int]:
        return self.source[self.index].prompt_ids

    @property
    def completions(self) -> list[list[int]]:
        return self.source[self.index].completions[self.start:self.stop]

    @property
    def contexts(self) -> list[list[int]]:
        return self.source[self.index].contexts[self.start:self.stop]

    @property
    def num_completions(self) -> int:
        return self.stop - self.start

    def context(self, j: int) -> list[int]:
        """The context tokens of completion `j` ([] when it has none)."""
        contexts = self.contexts
        return contexts[j] if contexts else []


def plan_rows(lengths: Iterable[tuple[str, int, Sequence[int], Sequence[int]]], mode: str,
              max_row_tokens: int) -> Iterator[tuple[int, str, int, int, int]]:
    """The rows of videos given by their lengths: per video `(video_id, prompt tokens, tokens of each completion,
    tokens of each context or [] when none)`; yields `(video index, video id, first comment, end comment, row tokens)` in video
    order then comment order. The rule (and the errors) of `make_rows`."""
    _check_mode(mode)
    for index, (video_id, p, comps, ctxs) in enumerate(lengths):
        if p == 0:
            raise VrpError(f"video {video_id!r}: empty prompt (the first comment token is predicted from the "
                           f"prompt's last position)")
        if ctxs and len(ctxs) != len(comps):
            raise VrpError(f"video {video_id!r}: {len(ctxs)} contexts for {len(comps)} comments")
        start, length = 0, p  # the open row: its first comment and its tokens so far
        for i, c in enumerate(comps):
            if not c:
                raise VrpError(f"video {video_id!r}: comment {i} has no tokens")
            n = (ctxs[i] if ctxs else 0) + c
            if p + n > max_row_tokens:
                raise VrpError(f"video {video_id!r}: prompt ({p} tokens) + comment {i} ({n} tokens) exceed "
                               f"max_row_tokens={max_row_tokens}; raise it or lower max_prompt_tokens / "
                               f"max_comment_tokens")
            if i > start and (mode == "none" or length + n > max_row_tokens):
                yield index, video_id, start, i, length
                start, length = i, p
            length += n
        if comps:
            yield index, video_id, start, len(comps), length


def make_rows(videos: Sequence[EncodedVideo], mode: str, max_row_tokens: int) -> list[Any]:
    """Split videos into rows, in video order then comment order (deterministic).

    mode `none`: one row per (video, comment). mode `shared_prefix`: the video's comments are packed greedily behind
    one copy of the prompt; when the next comment (with its context, `EncodedVideo.contexts`) would make the row
    longer than `max_row_tokens` (tokens), a new row repeating the prompt is started. Rows of a list of encodings are
    `Row`s (sharing the encodings' token lists); rows of a source with `lengths()` (`vrp.token_cache.EncodedSplit`)
    are `LazyRow`s planned from the lengths alone. Raises VrpError for an unknown mode, an empty prompt or comment,
    contexts that are not one per comment, or a comment that does not fit with the prompt into `max_row_tokens`
    (naming the video).
    """
    if hasattr(videos, "lengths"):
        return [LazyRow(videos, i, a, b, n, vid) for i, vid, a, b, n in plan_rows(videos.lengths(), mode, max_row_tokens)]
    lengths = ((v.video_id, len(v.prompt_ids), [len(c) for c in v.completions],
                [len(x) for x in getattr(v, "contexts", None) or []]) for v in videos)
    rows = []
    for i, _, a, b, _ in plan_rows(lengths, mode, max_row_tokens):
        v = videos[i]
        contexts = getattr(v, "contexts", None) or []
        rows.append(Row(v.prompt_ids, v.completions[a:b], v.video_id,
                        contexts[a:b] if contexts else [[] for _ in range(a, b)]))
    return rows


def shared_prefix_mask(segments: torch.Tensor) -> torch.Tensor:
    """Boolean shared-prefix attention mask from per-token segment ids.

    segments: (batch, seq) int; 0 = prompt, j >= 1 = comment j, -1 = padding.
    Returns (batch, 1, seq, seq) bool, True where query q may attend key k: k <= q and (k is prompt or k is in q's
    comment), both real; a padding query attends only to itself.
    """
    n = segments.shape[1]
    idx = torch.arange(n, device=segments.device)
    causal = (idx[None, :] <= idx[:, None])[None]                      # (1, q, k)
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]          # (B, q, 1), (B, 1, k)
    real = (seg_q >= 0) & (seg_k >= 0)
    allowed = causal & real & ((seg_k == 0) | (seg_k == seg_q))
    pad_self = (seg_q < 0) & (idx[:, None] == idx[None, :])[None]
    return (allowed | pad_self)[:, None]


def collate(rows: list[Row], pad_id: int, mode: str) -> Batch:
    """Pad rows (on the right) into one batch.

    Returns a dict:
    - `input_ids`: (B, T) long, pads = `pad_id` (which may equal EOS: pads are told apart by the mask, not the id);
    - `attention_mask`: mode `none`: (B, T) long, 1 = real token (transformers builds causal + padding);
      mode `shared_prefix`: (B, 1, T, T) bool, True = may attend (see `shared_prefix_mask`; `loss_sum` converts it
      for the model's attention implementation with `model_attention_mask`);
    - `position_ids`: (B, T) long; prompt 0..P-1, token k of comment j's context + comment at P + k; pads 0;
    - `target_positions`: (N,) long, flat index b*T + t of the hidden state that predicts each target: the last
      position of the comment's context (or of the prompt, without a context) for a comment's first token, the
      previous token of the same comment otherwise;
    - `target_ids`: (N,) long, the comment tokens (EOS included); prompt and context tokens are never targets;
    - `target_comment`: (N,) long, index of each target's comment in batch order (row by row);
    - `num_comments` (int), `num_tokens` (int, real non-pad tokens), `num_targets` (int, N).
    Raises VrpError for an empty list, an unknown mode, a row in mode `none` that has more than one completion, or a
    row whose contexts are not one per completion.
    """
    _check_mode(mode)
    if not rows:
        raise VrpError("collate: no rows")
    if mode == "none" and any(len(r.completions) != 1 for r in rows):
        raise VrpError("collate(mode='none') needs one completion per row; build rows with make_rows(mode='none')")
    bad = next((r for r in rows if r.contexts and len(r.contexts) != len(r.completions)), None)
    if bad is not None:
        raise VrpError(f"collate: row of video {bad.video_id!r} has {len(bad.contexts)} contexts for "
                       f"{len(bad.completions)} completions")
    b, t = len(rows), max(r.num_tokens for r in rows)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    position_ids = torch.zeros((b, t), dtype=torch.long)
    segments = torch.full((b, t), -1, dtype=torch.long)
    tgt_pos: list[int] = []
    tgt_ids: list[int] = []
    tgt_comment: list[int] = []
    n_comments = 0
    for i, r in enumerate(rows):
        p = len(r.prompt_ids)
        input_ids[i, :p] = torch.tensor(r.prompt_ids)
        position_ids[i, :p] = torch.arange(p)
        segments[i, :p] = 0
        off = p
        for j, c in enumerate(r.completions):
            ctx = r.context(j)
            m, n = len(ctx), len(c)
            input_ids[i, off:off + m + n] = torch.tensor(ctx + c)
            position_ids[i, off:off + m + n] = torch.arange(p, p + m + n)
            segments[i, off:off + m + n] = j + 1
            first = off + m - 1 if m else p - 1                       # the position that predicts c[0]
            tgt_pos += [i * t + first] + [i * t + off + m + k for k in range(n - 1)]
            tgt_ids += c
            tgt_comment += [n_comments] * n
            n_comments += 1
            off += m + n
    if mode == "none":
        mask: torch.Tensor = (segments >= 0).long()
    else:
        mask = shared_prefix_mask(segments)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids,
            "target_positions": torch.tensor(tgt_pos, dtype=torch.long),
            "target_ids": torch.tensor(tgt_ids, dtype=torch.long),
            "target_comment": torch.tensor(tgt_comment, dtype=torch.long),
            "num_comments": n_comments, "num_tokens": sum(r.num_tokens for r in rows), "num_targets": len(tgt_ids)}


def micro_batches(rows: list[Any], batch_size: int) -> list[list[Any]]:
    """`rows` cut into consecutive micro-batches of `batch_size` (the last may be shorter)."""
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
