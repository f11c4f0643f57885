"""Batch prediction: inputs -> prompts -> comments for each decoding preset -> CSV / XLSX / JSONL rows.

Knows: the options of `vrp generate` (`GenerateConfig`: model or run, presets, counts and budgets), which inputs it
accepts (dataset dirs and tables via `vrp.prepare.run`, transcript files via `vrp.transcripts`, or a title + transcript
string) and the output columns `video_id, title, model, adapter, preset, comment_index, comment, new_tokens, logprob,
finished, prompt_tokens, seconds, tier` (the like tier asked for, `vrp.tiers`: `any` or, for a run trained with tiers,
`top` / `typical` / `low`, whose marker opens the assistant turn before generation), and with `rerank` also `pmi`
(`vrp.rerank`). Does not know: decoding internals (`vrp.decoding`, `vrp.rerank`), a run's layout
(`vrp.rundir.RunDir`, which also gives the run's prompt settings).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from vrp.artifacts import CollectDir, DatasetDir
from vrp.clean import check_text
from vrp.embeddings import load_embedder
from vrp.errors import ConfigError, VrpError
from vrp.files import atomic_path
from vrp.generate.config import TRANSCRIPT_EXTS, GenerateConfig
from vrp.model import check_context, load_for_inference
from vrp.presets import get_preset, needs_no_video_prompt
from vrp.prompt_format import resolve_prompt_config
from vrp.prompts import PromptConfig, no_video_prompt_ids, video_prompt_ids
from vrp.records import Video
from vrp.rerank import comments_for_prompt
from vrp.rundir import RunDir, prompt_settings
from vrp.sheets import write_csv, write_xlsx
from vrp.sources import load_source
from vrp.tiers import check_tier, marker_ids, run_tier_source
from vrp.transcripts import read_transcript, segments_to_text


def load_inputs(input_path: str | None, title: str = "", transcript: str | None = None,
                max_videos: int = 0) -> list[Video]:
    """Videos to predict for: from `input_path` (dataset dir: its validation split; table; transcript file) or from
    `transcript` (with `title`); the first `max_videos` (0 = all).

    Tables need `title` and `transcript` columns (`comment` is not needed). A `title` goes with a `transcript`
    text or a transcript file; with a table or directory, whose videos have their own titles, it is a ConfigError.
    Raises ConfigError when both or neither are given, VrpError when the input yields no video.
    """
    if max_videos < 0:
        raise ConfigError("max_videos", f"must be >= 0 (0 = all), got {max_videos}")
    if bool(input_path) == (transcript is not None):
        raise ConfigError("input", "give exactly one of an `input` file or a `transcript` text")

    for name, text in (("title", title), ("transcript", transcript or "")):
        bad = next((i for i, ch in enumerate(text) if "\udc80" <= ch <= "\udcff"), None)
        if bad is not None:  # a command-line argument that was not UTF-8 (Python's surrogateescape of the byte)
            raise ConfigError(name, f"the text holds the byte 0x{ord(text[bad]) - 0xDC00:02X} at character {bad}, "
                                    f"which is not UTF-8 text")
        try:
            check_text(text, "the text")
        except VrpError as e:
            raise ConfigError(name, str(e)) from None
    if transcript is not None:
        if not transcript.strip():
            raise ConfigError("transcript", "is empty")
        return [Video(video_id="input", title=title, transcript=transcript)]
    path = Path(str(input_path))
    if path.suffix.lower() in TRANSCRIPT_EXTS and path.is_file():
        text = segments_to_text(read_transcript(path))  # any encoding: vrp.charsets, a guess is logged
        if not text.strip():
            raise VrpError(f"{path}: empty transcript")
        return [Video(video_id=path.stem, title=title, transcript=text)]
    if title:
        raise ConfigError("title", f"goes with a transcript text or a transcript file ({', '.join(TRANSCRIPT_EXTS)}); "
                                   f"the videos of {path} have their own titles")

    videos, _ = load_source(path, require_comments=False)
    data = DatasetDir(path)
    if path.is_dir() and data.validation_path.is_file() and not CollectDir(path).exists():
        videos = data.validation_videos()  # a dataset dir: predict for its held-out videos
        if not videos:
            raise VrpError(f"{data.validation_path}: no videos (for a dataset dir, generate predicts for its "
                           f"validation split)")
    return videos[: max_videos or None]


def predict(videos: list[Video], cfg: GenerateConfig | None = None, progress: bool = True,
            loaded: tuple[Any, Any, dict[str, Any]] | None = None,
            prompt: PromptConfig | None = None, embedder: Any = None) -> list[dict[str, Any]]:
    """The rows of `predict_videos` for every video, as one list (see there)."""
    return [row for rows in predict_videos(videos, cfg, progress, loaded, prompt, embedder) for row in rows]


def predict_videos(videos: Sequence[Video], cfg: GenerateConfig | None = None, progress: bool = True,
                   loaded: tuple[Any, Any, dict[str, Any]] | None = None, prompt: PromptConfig | None = None,
                   embedder: Any = None, start: int = 0) -> Iterator[list[dict[str, Any]]]:
    """Generate `cfg.num_comments` comments per video for each preset of `cfg` (one for a single-output preset,
    `Preset.comment_count`), one dict per comment (see the module doc). The model (`cfg.model` and/or
    `cfg.run` + `cfg.checkpoint`) is loaded once, or taken from
    `loaded` = `(model, tokenizer, info)`; `prompt` (default: the run's prompt settings, read before the model is
    loaded) sets the prompt budget. Sampling is seeded per (video, preset) with `cfg.seed + video index`, so
    results do not depend on the order of presets. With `cfg.tier` other than `any`, the tier's marker
    (`vrp.tiers.marker_ids`) follows each prompt. Raises ConfigError / VrpError before any generation when a
    prompt cannot be built or does not fit the model's context, or ConfigError('tier') when a tier is asked of a
    model not trained with tiers. `cad` and reranking (`cfg.rerank`) also use the no-video prompt
    (`prompts.no_video_prompt_ids`, with the same marker); reranking embeds comments with `embedder` (default: the
    bundled MiniLM) and adds a `pmi` column (`vrp.rerank`).
    Yields the rows of one video at a time, in input order, from `videos[start]` on (the earlier ones are skipped:
    `vrp.generate.stream` resumes a file with it; a video's seed is still `cfg.seed` + its index in `videos`), so a
    caller can write each video's rows as soon as they exist. Prompts are checked for every video from `start` on
    before the first is generated, and built again when their video comes (none is kept: memory stays flat).
    """
    from tqdm.auto import tqdm

    cfg = cfg or GenerateConfig()
    run = RunDir(cfg.run) if cfg.run else None
    pcfg = prompt or prompt_settings(run, cfg.max_prompt_tokens)  # checked before the model is loaded
    check_tier(cfg.tier, run_tier_source(run) is not None)
    m, tok, info = loaded or load_for_inference(cfg.model, run, cfg.checkpoint, cfg.precision)
    pcfg = resolve_prompt_config(tok, pcfg, model=info.get("model"))  # `auto` (a model without run) becomes chat or plain, said on stderr
    marker = marker_ids(tok, cfg.tier)
    check_context(m, info["model"], pcfg.max_prompt_tokens + len(marker) + cfg.max_new_tokens,
                  "`max_prompt_tokens` + `max_new_tokens`" + (" + the tier marker" if marker else ""))
    for v in videos[start:]:  # all prompts first: a video whose prompt cannot be built fails before any generation
        video_prompt_ids(tok, v, pcfg)  # names the video; a ConfigError keeps its field
    presets = cfg.presets()
    no_video = (no_video_prompt_ids(tok, pcfg) + marker
                if any(needs_no_video_prompt(p, cfg.rerank) for p in presets) else None)
    if cfg.rerank and embedder is None:
        embedder = load_embedder()
    bar = tqdm(total=(len(videos) - start) * len(presets), desc="generate (videos x presets)", unit="setup",
               disable=not progress)
    try:
        for vi in range(start, len(videos)):
            v, rows = videos[vi], []
            ids = video_prompt_ids(tok, v, pcfg)
            for preset in presets:
                k = get_preset(preset).comment_count(cfg.num_comments)  # a single-output preset gives one
                t0 = time.perf_counter()
                comments = comments_for_prompt(m, tok, ids + marker, preset, k, cfg.max_new_tokens, cfg.seed + vi,
                                               no_video, cfg.rerank, cfg.rerank_lambda, embedder,
                                               prompt_format=pcfg.prompt_format)
                secs = time.perf_counter() - t0
                for ci, c in enumerate(comments, 1):
                    rows.append({"video_id": v.video_id, "title": v.title, "model": info["model"],
                                 "adapter": info["adapter"] or "", "preset": preset, "comment_index": ci,
                                 "comment": c.text, "new_tokens": c.tokens, "logprob": round(c.logprob, 4),
                                 "finished": c.finished, "prompt_tokens": len(ids), "seconds": round(secs, 3),
                                 "tier": cfg.tier, **({"pmi": round(float(c.pmi), 4)} if cfg.rerank else {})})
                bar.update(1)
            yield rows
    finally:
        bar.close()


def _json_scalar(value: Any) -> Any:
    """A numpy scalar (np.int64, np.bool_, ...) as the Python value `json` can write."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_predictions(rows: list[dict[str, Any]], out: str | Path, escape_formulas: bool = True,
                      replace: bool = True) -> None:
    """Write prediction rows to `.csv`, `.xlsx` or `.jsonl` (by extension), atomically; with `replace=False` only as
    a new file (VrpError when another command created `out` meanwhile, `vrp.files.atomic_path`).

    Text is protected for spreadsheets (`vrp.sheets`): xlsx text cells are always string cells (never formulas);
    CSV text cells that start with `=`, `+`, `-`, `@`, tab or CR get a leading `'` (OWASP "CSV Injection") unless
    `escape_formulas` is False (for programs that read the CSV). JSONL is written as is."""
    import pandas as pd

    out = Path(out)
    df = pd.DataFrame(rows)
    ext = out.suffix.lower()
    with atomic_path(out, replace) as tmp:
        if ext == ".csv":
            write_csv(df, tmp, escape_formulas)
        elif ext == ".xlsx":
            write_xlsx(df, tmp)
        elif ext == ".jsonl":
            # json.dumps, not DataFrame.to_json: no `\/` escapes in paths; missing cells (NaN) as null
            records = df.astype(object).where(df.notna(), None).to_dict("records")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False, default=_json_scalar) + "\n" for r in records),
                           encoding="utf-8")
        else:
            raise ConfigError("out", f"unknown extension {ext!r}; use .csv, .xlsx or .jsonl")
