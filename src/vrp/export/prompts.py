"""The prompt outside vrp: the exact text vrp sends its model for a video, for programs that run an export
(llama.cpp, Ollama, vLLM, TGI), and the parts of it they fill in (`vrp generate --print-prompt`).

Knows: how a video's prompt is put together from `vrp.prompts` (`fitted_transcript`: the transcript cut to the
run's budget as vrp cuts it; `prompt_text`: the rendered prompt; `user_message`: the user turn) in the run's prompt
format (`RunDir.prompt_config`, or `auto` for a base model), plus the tier marker vrp puts after the prompt
(`vrp.tiers.MARKERS`). Only the tokenizer is loaded, never the weights.
Does not know: rendering or truncation rules themselves (`vrp.prompts`), nor the export formats (`vrp.export.run`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vrp.errors import ConfigError
from vrp.model import load_tokenizer
from vrp.prompt_format import resolve_prompt_config
from vrp.prompts import build_prompt_ids, fitted_transcript, prompt_text, user_message
from vrp.rundir import RunDir, prompt_settings
from vrp.tiers import MARKERS, check_tier, marker_ids, run_tier_source

PRINT_MODES = ("text", "user", "json")


@dataclass(frozen=True)
class VideoPrompt:
    """One video's prompt as other programs must send it.

    text: the whole prompt text (special tokens written out) that vrp tokenizes without adding special tokens,
    tier marker included: for a raw completion API (llama.cpp `/completion`, Ollama `raw`). user: the user message
    (title and the cut transcript): Ollama's prompt with the exported Modelfile, or the user message of a chat API
    with `system` as the system message. prompt_tokens: tokens of `text` in vrp's tokenizer. transcript_truncated:
    whether the transcript was cut to the budget."""

    video_id: str
    title: str
    system: str
    user: str
    text: str
    prompt_tokens: int
    transcript_truncated: bool
    prompt_format: str
    tier: str

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready mapping."""
        return asdict(self)


def video_prompts(videos: list[Any], model: str | None = None, run: str | None = None,
                  max_prompt_tokens: int | None = None, tier: str = "any") -> list[VideoPrompt]:
    """The prompts of `videos` (`vrp.records.Video`) for base model `model` or run dir `run` (its base model, prompt
    settings and format; `model` overrides the base), with the budget `max_prompt_tokens` (None: the run's, else
    1024) and the marker of like tier `tier`. Raises ConfigError naming the option (`model`, `run`, `tier`,
    `max_prompt_tokens`, `prompt_format`) as `vrp generate` would, before any text is printed."""

    if not model and not run:
        raise ConfigError("model", "give a `model` or a `run`")
    rd = RunDir(run) if run else None
    pcfg = prompt_settings(rd, max_prompt_tokens)
    check_tier(tier, run_tier_source(rd) is not None)
    tok = load_tokenizer(model or rd.model_spec())  # type: ignore[union-attr]
    pcfg = resolve_prompt_config(tok, pcfg)
    marker = MARKERS[tier] + "\n" if tier in MARKERS else ""
    system = pcfg.system_prompt if pcfg.prompt_format == "chat" else ""
    out = []
    for v in videos:
        cut = fitted_transcript(tok, v.title, v.transcript, pcfg)
        ids = build_prompt_ids(tok, v.title, v.transcript, pcfg) + marker_ids(tok, tier)
        out.append(VideoPrompt(video_id=v.video_id, title=v.title, system=system, user=user_message(v.title, cut),
                               text=prompt_text(tok, v.title, cut, pcfg) + marker, prompt_tokens=len(ids),
                               transcript_truncated=cut != v.transcript,
                               prompt_format=pcfg.prompt_format, tier=tier))
    return out
