"""Import video/comment data from the supported sources, group rows into videos and split by video.

Knows: the original project's seed xlsx (`comments`, `titles`, `text`, `length`: LLaMA-2 `[INST]` strings, the rows
of one video adjacent with equal prompts up to a truncated tail), a test xlsx with only `text` (no comments),
user tables (CSV, JSONL, Parquet, xlsx) with `title`, `transcript`, `comment` and optional `video_id`, `like_count`,
and collect dirs written by `vrp collect` (via `vrp.collect.videos`). Writes a dataset directory: `train.jsonl`,
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

from vrp import clean
from vrp.errors import VrpError
from vrp.io import (
    check_writable,
    current_umask,
    sha256_file,
    write_json_atomic,
    write_jsonl_atomic,
)
from vrp.records import Comment, Video, read_videos

TABLE_EXTS = (".xlsx", ".csv", ".jsonl", ".parquet")
SEED_PREFIX_CHARS = 200  # rows of one seed video share at least this prompt prefix (their tails differ by truncation)


def _read_table(path: Path) -> Any:
    import pandas as pd

    ext = path.suffix.lower()
    # Text columns are read as text: a column of numeric ids with one empty cell would otherwise become floats
    # ('123' -> '123.0'), and so would a comment '5'.
    text_cols = {c: str for c in ("video_id", "title", "transcript", "comment", "comments", "titles", "text")}
    try:
        if ext == ".xlsx":
            return pd.read_excel(path, dtype=text_cols)
        if ext == ".csv":
            return pd.read_csv(path, dtype=text_cols)
        if ext == ".jsonl":
            return pd.read_json(path, lines=True)
        if ext == ".parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError as e:
        raise VrpError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); save the file as UTF-8") from None
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
    first_row: dict[str, int] = {}
    for i in range(len(df)):
        row = i + 2 if path.suffix.lower() in (".xlsx", ".csv") else i + 1
        title, transcript, comment = (_cell(df[c].iloc[i]) for c in ("title", "transcript", "comment"))
        if not _visible(transcript):
            raise VrpError(f"{path}: row {row}: empty or missing 'transcript'")
        vid = _cell(df["video_id"].iloc[i]) if "video_id" in df.columns else ""
        key = vid or hashlib.sha1(f"{title}\n{transcript}".encode()).hexdigest()[:10]
        v = by_key.setdefault(key, Video(video_id=key, title=title, transcript=transcript))
        first_row.setdefault(key, row)
        for name, value, known in (("transcript", transcript, v.transcript), ("title", title, v.title)):
            if value != known:
                raise VrpError(f"{path}: row {row}: video_id {vid!r} has a different {name} than row "
                               f"{first_row[key]}; all rows of one video must have the same title and transcript")
        if not comment:
            stats["comments_skipped_empty"] += 1
            continue
        like = None
        if "like_count" in df.columns and _cell(df["like_count"].iloc[i]):
            try:
                like = int(float(df["like_count"].iloc[i]))
            except (TypeError, ValueError, OverflowError):  # OverflowError: inf
                raise VrpError(f"{path}: row {row}: like_count {_cell(df['like_count'].iloc[i])!r} is not a finite "
                               f"number") from None
        v.comments.append(Comment(text=comment, like_count=like))
    for v in by_key.values():
        if any(c.like_count is not None for c in v.comments):
            v.comments.sort(key=lambda c: -(c.like_count or 0))
        for r, c in enumerate(v.comments, 1):
            c.rank = r
    return list(by_key.values())


def _visible(text: str) -> bool:
    """True when `text` has something besides whitespace and invisible characters (zero-width spaces, BOMs)."""
    return bool(clean.remove_invisible(text).strip())


def _drop_blank_comments(videos: list[Video], stats: Counter) -> None:
    """Drop comments that are only whitespace or invisible characters (they would train the model to say
    nothing); the kept ones are ranked again 1..n in their order."""
    for v in videos:
        kept = [c for c in v.comments if _visible(c.text)]
        if len(kept) != len(v.comments):
            stats["comments_skipped_empty"] += len(v.comments) - len(kept)
            for r, c in enumerate(kept, 1):
                c.rank = r
            v.comments = kept


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
        from vrp.collect.videos import load_collect_dir

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
    _drop_blank_comments(videos, stats)
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
    """True when the first record of a .jsonl is a video record (`video_id` and `transcript`, no `comment`
    column); `comments` is optional (videos to predict for have none)."""
    import json

    with open(path, encoding="utf-8", errors="replace") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return '"video_id"' in first and '"comments"' in first  # a broken first line: let read_videos name it
    return isinstance(obj, dict) and "video_id" in obj and "transcript" in obj and "comment" not in obj


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


def _source_sha256(source: Path) -> str:
    """sha256 of a source file, of a collect dir's videos.jsonl, or of a dataset dir's split files in order."""
    if source.is_file():
        return sha256_file(source)
    if (source / "videos.jsonl").is_file():
        return sha256_file(source / "videos.jsonl")
    h = hashlib.sha256()
    for name in ("train.jsonl", "validation.jsonl"):
        if (source / name).is_file():
            h.update(name.encode() + b"\0" + sha256_file(source / name).encode() + b"\0")
    return h.hexdigest()


DATASET_FILES = ("train.jsonl", "validation.jsonl", "manifest.json")


def _write_dataset_dir(out: Path, train: list[Video], val: list[Video], manifest: dict[str, Any]) -> None:
    """Write the three dataset files so that `out` never holds a mix of old and new files or a dataset without
    its manifest: they are written into a temporary directory, which is renamed to `out` when `out` does not
    exist, else moved into it one by one with `manifest.json` last (an old manifest is removed first)."""
    import os
    import shutil
    import tempfile

    out = out.absolute()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # next to a new `out` (renamed into place), inside an existing one (its files are moved out of it)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out if out.is_dir() else out.parent))
    except OSError as e:
        blocker = next((a for a in out.parents if a.exists() and not a.is_dir()), None)
        why = f"{blocker} is a file, not a directory" if blocker else (e.strerror or str(e))
        raise VrpError(f"--out: cannot create {out} ({why})") from None
    try:
        os.chmod(stage, 0o777 & ~current_umask())
        write_jsonl_atomic(stage / "train.jsonl", (v.to_json() for v in train))
        write_jsonl_atomic(stage / "validation.jsonl", (v.to_json() for v in val))
        write_json_atomic(stage / "manifest.json", manifest)
        try:
            if not out.exists():
                os.replace(stage, out)
            else:
                (out / "manifest.json").unlink(missing_ok=True)  # a half-replaced dir has no manifest
                for name in DATASET_FILES:
                    os.replace(stage / name, out / name)
        except OSError as e:
            raise VrpError(f"{out}: cannot write the dataset ({e.strerror or e})") from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def prepare(source: str | Path, out: str | Path, val_fraction: float = 0.1, seed: int = 0,
            overwrite: bool = False) -> dict[str, Any]:
    """Import `source`, split by video and write `out/{train,validation}.jsonl` and `out/manifest.json`.

    Returns the manifest. Refuses a non-empty `out` unless `overwrite` (VrpError naming `--overwrite`), and an
    `out` that is a file. The files appear together (see `_write_dataset_dir`); a failure leaves `out` as it was.
    """
    source, out = Path(source), Path(out)
    if out.exists() and not out.is_dir():
        raise VrpError(f"--out: {out} exists and is not a directory")
    if not 0 <= val_fraction < 1:  # checked here too, so a bad flag fails before the source is read
        raise VrpError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise VrpError(f"{out}: output directory exists and is not empty; pass --overwrite to replace it")
    check_writable(out, "--out")
    videos, stats = load_source(source)
    seen: set[str] = set()
    for v in videos:
        if v.video_id in seen:
            raise VrpError(f"{source}: duplicate video_id {v.video_id!r}")
        seen.add(v.video_id)
    train, val = split_videos(videos, val_fraction, seed)
    manifest = {
        "source": str(source.resolve()),
        "source_sha256": _source_sha256(source),
        "format": stats.pop("format"),
        "val_fraction": val_fraction, "seed": seed,
        "videos": {"train": len(train), "validation": len(val), "total": len(videos)},
        "comments": {"train": sum(len(v.comments) for v in train), "validation": sum(len(v.comments) for v in val)},
        "stats": stats,
    }
    _write_dataset_dir(out, train, val, manifest)
    return manifest
