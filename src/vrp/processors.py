"""Logits processors for comment generation: a repetition guard over the generated tokens only, and context-aware
decoding against a no-video prompt.

Knows: how to apply transformers' `RepetitionPenaltyLogitsProcessor` and `NoRepeatNGramLogitsProcessor` to the tokens
generated after the prompt (not to the prompt) while leaving the stop tokens untouched, and how to compute
context-aware decoding scores with a second KV cache for the no-video prompt that is prefilled once and advanced for
all K sampled rows in one forward pass per step.
Does not know: presets, prompts or where the no-video prompt comes from (see `decoding`, `prompts`).

Why the guard ignores the prompt: transformers' processors look at every token of `input_ids`, prompt included.
The prompt holds the end-of-turn token (`<|im_end|>` closes the system and the user turn), so a repetition penalty
of 1.15 divides the end-of-turn logit by 1.15 at every step, and a no-repeat n-gram rule bans it after a comment
whose last n-1 tokens end like a prompt turn: both make comments run on. Repeating words of the transcript is no
degeneration either, so the guard looks only at the comment being written.

Context-aware decoding (Shi et al. 2023, "Trusting Your Evidence: Hallucinate Less with Context-aware Decoding"):
next-token scores `(1 + alpha) * log p(. | video prompt) - alpha * log p(. | no-video prompt)`; with log-softmax
inputs this equals `(1 + alpha) * z_c - alpha * z_u` of the raw logits up to a per-row constant, which softmax
ignores. transformers' `UnbatchedClassifierFreeGuidanceLogitsProcessor` (`guidance_scale = 1 + alpha`,
`negative_prompt_ids`) computes the same numbers for one sequence, but with K samples its batch-1 negative cache
meets K rows at the second step and `generate` fails (checked with transformers 5.24); repeating the negative prompt
K times would prefill it K times. `ContextAwareLogitsProcessor` prefills it once and repeats its cache instead.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import LogitsProcessor, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor


class GeneratedTokensGuard(LogitsProcessor):
    """Repetition penalty (CTRL, Keskar et al. 2019: a seen token's logit is divided by `penalty` when positive,
    multiplied when negative) and no-repeat n-gram ban, both over `input_ids[:, prompt_len:]` only; the scores of
    `exempt_ids` (the stop tokens) are restored afterwards, so ending a comment is never penalised or banned.

    prompt_len: tokens of the prompt at the start of every row of `input_ids` (the rows are not left-padded: one
    prompt, K samples). penalty: 1.0 = off. ngram_size: 0 = off.
    """

    def __init__(self, prompt_len: int, penalty: float = 1.0, ngram_size: int = 0,
                 exempt_ids: Sequence[int] = ()) -> None:
        self.prompt_len = prompt_len
        self.exempt = torch.tensor(sorted(set(int(i) for i in exempt_ids)), dtype=torch.long)
        self.penalty = RepetitionPenaltyLogitsProcessor(float(penalty)) if penalty != 1.0 else None
        self.ngram = NoRepeatNGramLogitsProcessor(int(ngram_size)) if ngram_size > 0 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids: (rows, prompt_len + generated); scores: (rows, vocab). Returns new (rows, vocab) scores."""
        generated = input_ids[:, self.prompt_len:]
        if generated.shape[1] == 0:
            return scores
        exempt = self.exempt.to(scores.device)
        kept = scores[:, exempt].clone()
        scores = scores.clone()  # the caller's tensor is left as it was
        if self.penalty is not None:
            scores = self.penalty(generated, scores)
        if self.ngram is not None:
            scores = self.ngram(generated, scores)
        scores[:, exempt] = kept
        return scores


class ContextAwareLogitsProcessor(LogitsProcessor):
    """Context-aware decoding (see the module docstring): returns `(1 + alpha) * log_softmax(scores) - alpha *
    log_softmax(z_u)`, z_u the model's next-token logits after the no-video prompt followed by the same generated
    tokens as the row.

    model: the model `generate` runs (called again here, under the caller's `torch.no_grad()` / autocast).
    no_video_ids: (no_video_len,) token ids of the no-video prompt, ending with the assistant header like the video
    prompt. prompt_len: length of the video prompt at the start of every row of `input_ids`. Rows must keep their
    order between steps (sampling or greedy; not beam search, which reorders rows).
    The no-video prompt is prefilled once (batch 1) on the first call, its KV cache repeated to the number of rows,
    and each later call runs one forward pass of shape (rows, new tokens) on that cache.
    """

    def __init__(self, model: Any, no_video_ids: Sequence[int], prompt_len: int, alpha: float) -> None:
        if not no_video_ids:
            raise ValueError("ContextAwareLogitsProcessor: empty no-video prompt")
        self.model, self.no_video_ids, self.prompt_len, self.alpha = model, list(no_video_ids), prompt_len, alpha
        self.cache: Any = None
        self.last: torch.Tensor | None = None   # (rows, vocab) no-video logits for the next token
        self.fed = 0                             # generated tokens already fed to the no-video cache

    def _no_video_logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        from transformers import DynamicCache

        rows, step = input_ids.shape[0], input_ids.shape[1] - self.prompt_len
        if self.cache is None:
            ids = torch.tensor([self.no_video_ids], dtype=torch.long, device=input_ids.device)
            cache = DynamicCache(config=getattr(self.model, "config", None))
            out = self.model(input_ids=ids, cache=cache, use_cache=True)
            cache.batch_repeat_interleave(rows)
            self.cache, self.last, self.fed = cache, out.logits[:, -1].float().expand(rows, -1), 0
        if step > self.fed:
            new = input_ids[:, self.prompt_len + self.fed:self.prompt_len + step]
            out = self.model(input_ids=new, cache=self.cache, use_cache=True)
            self.last, self.fed = out.logits[:, -1].float(), step
        assert self.last is not None
        return self.last

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids: (rows, prompt_len + generated); scores: (rows, vocab) logits given the video prompt."""
        z_u = self._no_video_logits(input_ids)
        a = self.alpha
        return (1 + a) * torch.log_softmax(scores.float(), dim=-1) - a * torch.log_softmax(z_u, dim=-1)
