"""Import video/comment data from the supported sources, group rows into videos and split by video.

Knows: the original project's seed xlsx (`comments`, `titles`, `text`, `length`: LLaMA-2 `[INST]` strings, the rows
of one video adjacent with equal prompts up to a truncated tail), a test xlsx with only `text` (no comments),
user tables (CSV, JSONL, Parquet, xlsx) with `title`, `transcript`, `comment` and optional `video_id`, `like_count`,
and collect dirs written by `vrp collect` (via `vrp.collected`). Writes a dataset directory: `train.jsonl`,
`validation.jsonl` (one video per line) and `manifest.json`.
Does not know: tokens or models.
"""
from __future__ import annotations

import hashlib
import math
import random
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from vrp.records import Comment, Video, VrpError, read_videos, write_json_atomic, write_jsonl_atomic

TABLE_EXTS = (".xlsx", ".csv", ".jsonl", ".parquet")
SEED_PREFIX_CHARS = 200  # rows of one seed video share at least this prompt prefix (their tails differ by truncation)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_table(path: Path) -> Any:
    import pandas as pd

    ext = path.suffix.lower()
    try:
        if ext == ".xlsx":
            return pd.read_excel(path)
        if ext == ".csv":
            return pd.read_csv(path)
        if ext == ".jsonl":
            return pd.read_json(path, lines=True)
        if ext == ".parquet":
            return pd.read_parquet(path)
    except Exception as e:  # pandas/openpyxl/pyarrow raise many types for a corrupt file
        raise VrpError(f"{path}: cannot read as {ext[1:]} ({type(e).__name__}: {e})") from None
    raise VrpError(f"{path}: unknown extension {ext!r}; expected one of {TABLE_EXTS} or a collect dir")


def _cell(value: Any) -> str:
    """A table cell as stripped text; NaN/None become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _split_inst(text: str, path: Path, row: int) -> tuple[str, str]:
    """Split a LLaMA-2 chat string `<s>[INST] prompt [/INST] answer </s>` into (prompt, answer)."""
    if "[/INST]" not in text:
        raise VrpError(f"{path}: row {row}: column 'text' has no '[/INST]' marker (not the seed LLaMA-2 format)")
    prompt, answer = text.split("[/INST]", 1)
    prompt = prompt.replace("<s>", "").replace("[INST]", "").strip()
    answer = answer.replace("</s>", "").strip()
    return prompt, answer


def load_seed_table(df: Any, path: Path, stats: Counter) -> list[Video]:
    """Group seed-format rows into videos.

    Grouping: consecutive rows are one video when their prompts (the text between `[INST]` and `[/INST]`) agree on
    the first `SEED_PREFIX_CHARS` characters (or all of the shorter one). The longest prompt of the group becomes the
    transcript (the others are the same text truncated earlier). Title and transcript are not separable in this
    format, so `title` is '' and the transcript holds both. Comment rank = order within the group (the seed lists
    most, middle, least liked). Rows with an empty comment are skipped and counted. A file without a `comments`
    column (the test set) gives videos without comments.
    """
    has_comments = "comments" in df.columns
    groups: list[list[tuple[str, str]]] = []
    prev = None
    for i, raw in enumerate(df["text"].tolist()):
        row = i + 2  # spreadsheet row number (header is row 1)
        text = _cell(raw)
        if not text:
            raise VrpError(f"{path}: row {row}: empty 'text'")
        prompt, answer = _split_inst(text, path, row)
        if not prompt:
            raise VrpError(f"{path}: row {row}: empty prompt (nothing between [INST] and [/INST])")
        comment = _cell(df["comments"].iloc[i]) if has_comments else answer
        k = min(len(prompt), SEED_PREFIX_CHARS, len(prev) if prev else 0)
        if prev is not None and prompt[:k] == prev[:k]:
            groups[-1].append((prompt, comment))
        else:
            groups.append([(prompt, comment)])
        prev = prompt
    videos = []
    for g in groups:
        transcript = max((p for p, _ in g), key=len)
        vid = "seed-" + hashlib.sha1(transcript[:SEED_PREFIX_CHARS].encode()).hexdigest()[:10]
        comments = []
        for p, c in g:
            if c:
                comments.append(Comment(text=c, rank=len(comments) + 1))
            elif has_comments:
                stats["comments_skipped_empty"] += 1
        videos.append(Video(video_id=vid, title="", transcript=transcript, comments=comments))
    stats["grouping"] = f"adjacent rows whose prompts share the first {SEED_PREFIX_CHARS} characters"  # type: ignore
    return videos


def load_user_table(df: Any, path: Path, stats: Counter) -> list[Video]:
    """Group `title`, `transcript`, `comment` rows into videos (by `video_id` if present, else by title +
    transcript). Comments are ranked by `like_count` (descending) when present, else in file order. Rows with an
    empty comment are skipped and counted; an empty transcript is an error naming the row."""
    missing = [c for c in ("title", "transcript", "comment") if c not in df.columns]
    if missing:
        raise VrpError(f"{path}: missing column(s) {missing}; found {list(df.columns)}. Expected title, transcript, "
                       f"comment (optional video_id, like_count), or the seed format (comments, titles, text)")
    by_key: dict[str, Video] = {}
    likes: dict[str, list[int | None]] = {}
    for i in range(len(df)):
        row = i + 2 if path.suffix.lower() in (".xlsx", ".csv") else i + 1
        title, transcript, comment = (_cell(df[c].iloc[i]) for c in ("title", "transcript", "comment"))
        if not transcript:
            raise VrpError(f"{path}: row {row}: empty or missing 'transcript'")
        vid = _cell(df["video_id"].iloc[i]) if "video_id" in df.columns else ""
        key = vid or hashlib.sha1(f"{title}\n{transcript}".encode()).hexdigest()[:10]
        v = by_key.setdefault(key, Video(video_id=key, title=title, transcript=transcript))
        likes.setdefault(key, [])
        if not comment:
            stats["comments_skipped_empty"] += 1
            continue
        like = None
        if "like_count" in df.columns and _cell(df["like_count"].iloc[i]):
            try:
                like = int(float(df["like_count"].iloc[i]))
            except (TypeError, ValueError):
                raise VrpError(f"{path}: row {row}: like_count {df['like_count'].iloc[i]!r} is not a number") from None
        v.comments.append(Comment(text=comment, like_count=like))
    for v in by_key.values():
        if any(c.like_count is not None for c in v.comments):
            v.comments.sort(key=lambda c: -(c.like_count or 0))
        for r, c in enumerate(v.comments, 1):
            c.rank = r
    return list(by_key.values())


def load_source(path: str | Path, require_comments: bool = True) -> tuple[list[Video], dict[str, Any]]:
    """Read any supported source into videos plus a stats dict for the manifest.

    Videos with no usable comment are dropped with a counted warning when `require_comments`. Raises VrpError for
    a missing file, unknown extension, missing columns, bad rows, or an empty result.
    """
    path = Path(path)
    stats: Counter = Counter()
    if path.is_dir():
        if not (path / "videos.jsonl").is_file():
            if (path / "train.jsonl").is_file():
                return read_videos(path / "train.jsonl") + (read_videos(path / "validation.jsonl") if (
                    path / "validation.jsonl").is_file() else []), {"format": "prepared dataset dir"}
            raise VrpError(f"{path}: directory has no videos.jsonl (collect dir) or train.jsonl (dataset dir)")
        from vrp.collected import load_collect_dir

        videos, cstats = load_collect_dir(path)
        stats.update({k: v for k, v in cstats.items() if isinstance(v, int)})
        fmt = "collect dir"
    elif not path.exists():
        raise VrpError(f"{path}: file not found")
    elif path.suffix.lower() == ".jsonl" and _looks_like_videos(path):
        videos, fmt = read_videos(path), "video jsonl"
    else:
        df = _read_table(path)
        if len(df) == 0:
            raise VrpError(f"{path}: no rows")
        if "text" in df.columns and "title" not in df.columns:
            videos, fmt = load_seed_table(df, path, stats), "seed xlsx (LLaMA-2 [INST] text)"
        else:
            videos, fmt = load_user_table(df, path, stats), "table (title, transcript, comment)"
    if require_comments:
        empty = [v.video_id for v in videos if not v.comments]
        if empty:
            warnings.warn(f"{path}: skipped {len(empty)} video(s) with zero usable comments", stacklevel=2)
            stats["videos_skipped_no_comments"] += len(empty)
            videos = [v for v in videos if v.comments]
    if not videos:
        raise VrpError(f"{path}: no usable videos")
    out = dict(stats)
    out["format"] = fmt
    return videos, out


def _looks_like_videos(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    return '"video_id"' in first and '"comments"' in first and '"comment"' not in first.replace('"comments"', "")


def split_videos(videos: list[Video], val_fraction: float, seed: int) -> tuple[list[Video], list[Video]]:
    """Split by video (never one video in both): shuffle with `random.Random(seed)`, the first
    round(n * val_fraction) (at least 1 when val_fraction > 0 and n >= 2) go to validation."""
    if not 0 <= val_fraction < 1:
        raise VrpError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    order = list(range(len(videos)))
    random.Random(seed).shuffle(order)
    n_val = round(len(videos) * val_fraction)
    if val_fraction > 0 and len(videos) >= 2:
        n_val = max(1, min(n_val, len(videos) - 1))
    val_idx = set(order[:n_val])
    return ([v for i, v in enumerate(videos) if i not in val_idx], [v for i, v in enumerate(videos) if i in val_idx])


def prepare(source: str | Path, out: str | Path, val_fraction: float = 0.1, seed: int = 0,
            overwrite: bool = False) -> dict[str, Any]:
    """Import `source`, split by video and write `out/{train,validation}.jsonl` and `out/manifest.json`.

    Returns the manifest. Refuses a non-empty `out` unless `overwrite` (VrpError naming `--overwrite`).
    """
    source, out = Path(source), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise VrpError(f"{out}: output directory exists and is not empty; pass --overwrite to replace it")
    videos, stats = load_source(source)
    seen: set[str] = set()
    for v in videos:
        if v.video_id in seen:
            raise VrpError(f"{source}: duplicate video_id {v.video_id!r}")
        seen.add(v.video_id)
    train, val = split_videos(videos, val_fraction, seed)
    manifest = {
        "source": str(source.resolve()),
        "source_sha256": sha256_file(source) if source.is_file() else sha256_file(source / "videos.jsonl"),
        "format": stats.pop("format"),
        "val_fraction": val_fraction, "seed": seed,
        "videos": {"train": len(train), "validation": len(val), "total": len(videos)},
        "comments": {"train": sum(len(v.comments) for v in train), "validation": sum(len(v.comments) for v in val)},
        "stats": stats,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "train.jsonl", (v.to_json() for v in train))
    write_jsonl_atomic(out / "validation.jsonl", (v.to_json() for v in val))
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
