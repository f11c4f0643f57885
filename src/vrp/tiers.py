"""Like tiers: which of a video's comments rose to the top, which are typical and which were ignored, and the tier
markers that tell a tiered model which kind of comment to write.

Knows: the tier rules (`assign_tiers`, `comment_tiers`), where the order comes from (`TIER_SOURCES`: like counts, or
the ranks of a dataset whose ranks are like ranks, such as the seed's most/middle/least liked), the marker of each
tier (`MARKERS`) and its token ids (`marker_ids`), how a video is tokenized with markers for training
(`encode_tiered_video`, with marker dropout), whether a run was trained with tiers (`run_tier_source`) and which
tier a request may ask for (`check_tier`).
Does not know: packing (a marker is a completion's context, see `vrp.packing.Row`), training, decoding or serving.

Rules, for the comments of one video whose order value is known (like count, or rank with 1 = most liked); n of them:
- n < 2, or all with the same like count: no tier (nothing says which one rose to the top);
- k = max(1, floor(n / 3)); **top** = comments liked strictly more than the (k+1)-th most liked one (at most k; a
  tie across the boundary leaves the tied comments out: they did not stand out); **low** = comments liked no more
  than the k-th least liked one (at least k; comments with as few likes are as ignored); **typical** = the rest;
- a comment without a like count gets no tier (with source `likes`); the others are tiered among themselves.
The seed's 3 ranked comments give top / typical / low (rank 1 / 2 / 3), its 2-comment video top / low.

Markers: the text `MARKERS[tier]` and a newline open the assistant turn (the chat template writes the assistant's
content right after the generation prompt, so this is the content "[most liked comment]\\n<comment>"; in the plain
prompt format the marker line follows the `Comment:` cue in the same way). The marker's
tokens are inputs that the comment attends to but carry no loss: the first comment token is predicted from the
marker's last position. `any` means no marker: a tiered run is trained with a share of its tiered comments
without their marker (`marker dropout`, default 0.2) and with its untiered comments (one-comment videos, missing
likes) without one, so `any` asks for a comment drawn from all tiers, as an untiered run does.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

from vrp.artifacts import DatasetDir
from vrp.errors import ConfigError, VrpError
from vrp.prompts import encode_video
from vrp.records import Comment, Video

TIERS = ("top", "typical", "low")
TIER_CHOICES = ("any",) + TIERS
TIER_SOURCES = ("auto", "likes", "rank")
MARKERS = {"top": "[most liked comment]", "typical": "[typical comment]", "low": "[least liked comment]"}
LABELS = {"any": "any comment", "top": "the top comment", "typical": "a typical comment",
          "low": "an ignored comment"}


def assign_tiers(values: Sequence[float | None]) -> list[str | None]:
    """Tier of each value (higher = more liked; None = unknown), by the rules of the module docstring.

    Example: likes [10, 5, 5, 5, 0, 0] -> k = 2: top [10], typical the three 5s, low the two 0s.
    Returns one of `TIERS` or None per value, in input order.
    """
    known = [v for v in values if v is not None]
    out: list[str | None] = [None] * len(values)
    n = len(known)
    if n < 2:
        return out
    desc = sorted(known, reverse=True)
    if desc[0] == desc[-1]:
        return out
    k = max(1, n // 3)
    top_floor, low_ceiling = desc[k], desc[n - k]
    for i, v in enumerate(values):
        if v is not None:
            out[i] = "top" if v > top_floor else "low" if v <= low_ceiling else "typical"
    return out


def comment_tiers(comments: Sequence[Comment], source: str) -> list[str | None]:
    """Tiers of one video's comments. source `likes`: by `like_count` (None = no tier); `rank`: by `rank`
    (1 = most liked). Raises VrpError for another source (resolve `auto` first with `resolve_tier_source`)."""
    if source == "likes":
        return assign_tiers([c.like_count for c in comments])
    if source == "rank":
        return assign_tiers([-c.rank for c in comments])
    raise VrpError(f"tier source must be 'likes' or 'rank', got {source!r}")


def dataset_format(data_dir: Any) -> str | None:
    """The `format` a dataset dir's `manifest.json` names (e.g. `seed xlsx (LLaMA-2 [INST] text)`), or None when
    there is no manifest or it names none. Raises VrpError naming the file when the manifest is damaged
    (`DatasetDir.manifest`)."""

    fmt = (DatasetDir(data_dir).manifest() or {}).get("format")
    return fmt if isinstance(fmt, str) else None


def resolve_tier_source(source: str, videos: Sequence[Video], fmt: str | None) -> str:
    """`likes` or `rank` for `source` (`auto`, `likes`, `rank`) on these videos: `auto` = `likes` when any comment
    has a like count, else `rank` when the dataset's format `fmt` is the seed's (its ranks are like ranks), else a
    ConfigError('tiers') saying the data has neither. Also raises ConfigError('tiers') when no comment gets a tier
    (e.g. only one-comment videos or equal like counts), ConfigError('tier_source') for an unknown source or for
    `likes` on data where no comment has a like count."""
    if source not in TIER_SOURCES:
        raise ConfigError("tier_source", f"choose from {TIER_SOURCES}, got {source!r}")
    if source == "auto":
        if any(c.like_count is not None for v in videos for c in v.comments):
            source = "likes"
        elif fmt and fmt.startswith("seed"):
            source = "rank"
        else:
            raise ConfigError("tiers", f"the dataset has no like counts and its ranks are not like ranks (format "
                                       f"{fmt or 'unknown'}); tiers need like counts (a collect dir, a like_count "
                                       f"column) or the seed's ranked comments; set `tier_source` rank if rank 1 "
                                       f"is the most liked comment of each video")
    tiered = sum(t is not None for v in videos for t in comment_tiers(v.comments, source))
    if not tiered:
        if source == "likes" and not any(c.like_count is not None for v in videos for c in v.comments):
            raise ConfigError("tier_source", "likes: no comment in the dataset has a like count; tiers by likes "
                                             "need like counts (a collect dir, a like_count column), or set "
                                             "`tier_source` rank if rank 1 is the most liked comment of each video")
        what = "like counts" if source == "likes" else "ranks"
        raise ConfigError("tiers", f"no comment gets a tier from its {what} (every video has fewer than two "
                                   f"comments with {what}, or its comments have equal {what})")
    return source


def marker_ids(tokenizer: Any, tier: str) -> list[int]:
    """Token ids of the marker of `tier` (`MARKERS[tier]` + newline, tokenized without special tokens); [] for `any`.
    Raises ConfigError('tier') for an unknown tier."""
    if tier == "any":
        return []
    if tier not in MARKERS:
        raise ConfigError("tier", f"choose from {TIER_CHOICES}, got {tier!r}")
    return list(tokenizer(MARKERS[tier] + "\n", add_special_tokens=False)["input_ids"])


def longest_marker(tokenizer: Any) -> int:
    """The most tokens a marker takes (for context-length checks)."""
    return max(len(marker_ids(tokenizer, t)) for t in TIERS)


def marker_dropped(seed: int, video_id: str, index: int, dropout: float) -> bool:
    """Whether comment `index` of `video_id` is trained without its marker: a fixed draw per (seed, video, comment)
    (`random.Random` seeded with that string, stable across processes), true with probability `dropout`."""
    return dropout > 0 and random.Random(f"vrp-tier-dropout:{seed}:{video_id}:{index}").random() < dropout


def encode_tiered_video(tokenizer: Any, video: Video, pcfg: Any, source: str, dropout: float = 0.0,
                        seed: int = 0) -> Any:
    """`prompts.encode_video` plus, per comment, its tier marker as context (`EncodedVideo.contexts`): the marker ids
    of its tier (`comment_tiers` over the video's non-empty comments), or [] when it has no tier or its marker is
    dropped (`marker_dropped`). Raises VrpError as `encode_video` does."""

    enc = encode_video(tokenizer, video, pcfg)
    kept = [c for c in video.comments if c.text.strip()]  # the comments encode_video keeps, in its order
    markers = {t: marker_ids(tokenizer, t) for t in TIERS}
    enc.contexts = [[] if t is None or marker_dropped(seed, video.video_id, i, dropout) else list(markers[t])
                    for i, t in enumerate(comment_tiers(kept, source))]
    return enc


def run_tier_source(run: Any) -> str | None:
    """The tier source of a run trained with tiers (`likes` / `rank`, as resolved when it was trained; `auto` only in
    a hand-written config.yaml), None for an untiered run or no run.
    run: a `vrp.rundir.RunDir` or None. Raises VrpError naming config.yaml when `tiers` is not a boolean."""
    if run is None:
        return None
    saved = run.config()
    tiers = saved.get("tiers", False)
    if not isinstance(tiers, bool):
        raise VrpError(f"{run.config_path}: option 'tiers' must be true or false, got {tiers!r}")
    if not tiers:
        return None
    source = saved.get("tier_source", "auto")
    if source not in TIER_SOURCES:
        raise VrpError(f"{run.config_path}: option 'tier_source' must be one of {TIER_SOURCES}, got {source!r}")
    return source


def check_tier(tier: str, tiered: bool, field: str = "tier") -> None:
    """Raise ConfigError(`field`) for a tier outside `TIER_CHOICES`, or a tier other than `any` for a model that was
    not trained with tiers."""
    if tier not in TIER_CHOICES:
        raise ConfigError(field, f"choose from {', '.join(TIER_CHOICES)}, got {tier!r}")
    if tier != "any" and not tiered:
        raise ConfigError(field, f"{tier!r} needs a run trained with like tiers (training option tiers: true); "
                                 f"this model was trained without them, so only 'any' is possible")


def prompt_with_tier(tokenizer: Any, prompt_ids: list[int], tier: str) -> list[int]:
    """The ids generation continues from: the prompt, then the tier's marker (nothing for `any`)."""
    return list(prompt_ids) + marker_ids(tokenizer, tier)
