"""Batch prediction: inputs -> prompts -> comments for each decoding preset -> CSV / XLSX / JSONL rows.

Knows: which inputs `vrp generate` accepts (dataset dirs and tables via `vrp.dataset`, transcript files via
`vrp.transcripts`, or a title + transcript string), the prompt settings of a run (its `config.yaml`), and the
output columns `video_id, title, model, adapter, preset, comment_index, comment, new_tokens, logprob, finished,
seconds`. Does not know: decoding internals (`vrp.decoding`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vrp.errors import VrpError
from vrp.io import atomic_path
from vrp.records import Video

TRANSCRIPT_EXTS = (".txt", ".vtt", ".srt", ".json3", ".json")


def load_inputs(input_path: str | None, title: str = "", transcript: str | None = None,
                max_videos: int = 0) -> list[Video]:
    """Videos to predict for: from `input_path` (dataset dir, table, or transcript file) or from `transcript`.

    Raises VrpError when both or neither are given, or when the input yields no video.
    """
    if max_videos < 0:
        raise VrpError(f"--max-videos must be >= 0 (0 = all), got {max_videos}")
    if bool(input_path) == (transcript is not None):
        raise VrpError("give exactly one of --input FILE or --transcript TEXT")
    if transcript is not None:
        if not transcript.strip():
            raise VrpError("--transcript is empty")
        return [Video(video_id="input", title=title, transcript=transcript)]
    path = Path(str(input_path))
    if path.suffix.lower() in TRANSCRIPT_EXTS and path.is_file():
        from vrp.transcripts import read_transcript, segments_to_text

        text = segments_to_text(read_transcript(path))  # .txt too: non-UTF-8 bytes are an error, not U+FFFD
        if not text.strip():
            raise VrpError(f"{path}: empty transcript")
        return [Video(video_id=path.stem, title=title, transcript=text)]
    from vrp.dataset import load_source

    videos, _ = load_source(path, require_comments=False)
    if path.is_dir() and (path / "validation.jsonl").is_file() and not (path / "videos.jsonl").is_file():
        from vrp.records import read_videos

        videos = read_videos(path / "validation.jsonl")  # a dataset dir: predict for its held-out videos
        if not videos:
            raise VrpError(f"{path / 'validation.jsonl'}: no videos (for a dataset dir, generate predicts for its "
                           f"validation split)")
    return videos[: max_videos or None]


def run_prompt_settings(run: str | None, max_prompt_tokens: int | None) -> Any:
    """The `PromptConfig` a run was trained with (its config.yaml's `max_prompt_tokens`, `truncation`), with
    `max_prompt_tokens` overriding; defaults when `run` is None. Raises VrpError for a broken config.yaml."""
    from vrp.prompts import PromptConfig

    kw: dict[str, Any] = {}
    if run and (Path(run) / "config.yaml").is_file():
        from vrp.options import coerce_values, load_yaml

        path = Path(run) / "config.yaml"
        saved = load_yaml(path)
        kw = coerce_values(PromptConfig, {k: saved[k] for k in ("max_prompt_tokens", "truncation") if k in saved},
                           str(path))
    if max_prompt_tokens:
        kw["max_prompt_tokens"] = max_prompt_tokens
    return PromptConfig(**kw)


def predict(videos: list[Video], run: str | None = None, model: str | None = None, checkpoint: str | None = None,
            presets: list[str] | None = None, num_comments: int = 1, max_new_tokens: int = 150, seed: int = 0,
            precision: str = "auto", max_prompt_tokens: int | None = None, progress: bool = True,
            loaded: tuple[Any, Any, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Generate `num_comments` comments per video for each preset; return one dict per comment (see module doc).

    The model is loaded once (or taken from `loaded`). Sampling is seeded per (video, preset) with `seed`, so
    results do not depend on the order of presets.
    """
    from tqdm.auto import tqdm

    from vrp.decoding import get_preset, timed_generate
    from vrp.model import check_context, load_for_inference
    from vrp.prompts import build_prompt_ids

    presets = presets or ["nucleus"]
    for p in presets:
        get_preset(p)
    if num_comments < 1:
        raise VrpError(f"--num-comments must be >= 1, got {num_comments}")
    if max_new_tokens < 1:
        raise VrpError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise VrpError(f"--max-prompt-tokens must be >= 1, got {max_prompt_tokens}")
    pcfg = run_prompt_settings(run, max_prompt_tokens)  # checked before the model is loaded
    m, tok, info = loaded or load_for_inference(model, run, checkpoint, precision)
    check_context(m, info["model"], pcfg.max_prompt_tokens + max_new_tokens,
                  "--max-prompt-tokens + --max-new-tokens")
    prompts = []  # all prompts first: a video whose prompt cannot be built fails before any generation
    for v in videos:
        try:
            prompts.append(build_prompt_ids(tok, v.title, v.transcript, pcfg))
        except VrpError as e:
            raise VrpError(f"video {v.video_id!r}: {e}") from None
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(videos) * len(presets), desc="generate", unit="video", disable=not progress)
    try:
        for vi, (v, prompt) in enumerate(zip(videos, prompts)):
            for preset in presets:
                k = 1 if preset == "greedy" else num_comments
                comments, secs = timed_generate(m, tok, prompt, preset, k, max_new_tokens, seed=seed + vi)
                for ci, c in enumerate(comments, 1):
                    rows.append({"video_id": v.video_id, "title": v.title, "model": info["model"],
                                 "adapter": info["adapter"] or "", "preset": preset, "comment_index": ci,
                                 "comment": c.text, "new_tokens": c.tokens, "logprob": round(c.logprob, 4),
                                 "finished": c.finished, "prompt_tokens": len(prompt), "seconds": round(secs, 3)})
                bar.update(1)
    finally:
        bar.close()
    return rows


def write_predictions(rows: list[dict[str, Any]], out: str | Path) -> None:
    """Write prediction rows to `.csv`, `.xlsx` or `.jsonl` (by extension), atomically."""
    import pandas as pd

    out = Path(out)
    df = pd.DataFrame(rows)
    ext = out.suffix.lower()
    with atomic_path(out) as tmp:
        if ext == ".csv":
            df.to_csv(tmp, index=False)
        elif ext == ".xlsx":
            # Excel cannot store most C0 control characters (openpyxl raises IllegalCharacterError), and a model
            # can generate them: drop them rather than lose the whole run at the last step.
            from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

            df = df.map(lambda x: ILLEGAL_CHARACTERS_RE.sub("", x) if isinstance(x, str) else x)
            df.to_excel(tmp, index=False, engine="openpyxl")
        elif ext == ".jsonl":
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            raise VrpError(f"--out: unknown extension {ext!r}; use .csv, .xlsx or .jsonl")
