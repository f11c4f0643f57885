"""Video/comment data from the supported sources, read into `Video` records: rows grouped into videos.

Knows: the original project's seed xlsx (`comments`, `titles`, `text`, `length`: LLaMA-2 `[INST]` strings, the rows
of one video adjacent with equal prompts up to a truncated tail), a test xlsx with only `text` (no comments),
user tables (CSV, JSONL, Parquet, xlsx) with `title`, `transcript`, `comment` and optional `video_id`, `like_count`,
and collect dirs written by `vrp collect` (via `vrp.collected`). Table cells are read as text exactly as written, in every format (`007`, `1.10`, `1e5`, `NA`
stay what they are; reading and shape checks live in `vrp.tables`), CSV/JSONL bytes in any encoding `vrp.charsets`
reads, and like counts by the one parser `likes.parse_like_count` (strict: a value that is not a count is an error
naming file, row and value).
Does not know: tokens or models, the split or the dataset dir (`vrp.prepare`).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from vrp import clean, likes
from vrp.artifacts import CollectDir, DatasetDir
from vrp.collected import load_collect_dir
from vrp.errors import VrpError
from vrp.records import Comment, Video, read_videos
from vrp.tables import TABLE_EXTS, read_jsonl_table  # noqa: F401  (read_jsonl_table: part of this module's API)
from vrp.tables import cell as _cell
from vrp.tables import read_table as _read_table
from vrp.tables import remove_nuls as _remove_nuls

SEED_PREFIX_CHARS = 200  # rows of one seed video share at least this prompt prefix (their tails differ by truncation)


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


def _lower_column_names(df: Any, path: Path) -> Any:
    """`df` with its column names stripped and lower-cased (`Title` and ` title ` are the `title` column, as
    spreadsheets are often written). Raises VrpError naming `path` and the columns when two names become one."""
    names = [str(c).strip().lower() for c in df.columns]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        same = [str(c) for c in df.columns if str(c).strip().lower() in clash]
        raise VrpError(f"{path}: columns {same} differ only in case or spaces; keep one of them")
    return df.set_axis(names, axis=1)


def load_user_table(df: Any, path: Path, stats: Counter, require_comments: bool = True) -> list[Video]:
    """Group `title`, `transcript`, `comment` rows into videos (by `video_id` if present, else by title +
    transcript). Comments are ranked by `like_count` (descending) when present, else in file order. Rows with an
    empty comment are skipped and counted; an empty transcript is an error naming the row. Without
    `require_comments` (videos to predict for) the `comment` column may be missing: the videos have no comments."""
    needed = ("title", "transcript", "comment") if require_comments else ("title", "transcript")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise VrpError(f"{path}: missing column(s) {missing}; found {list(df.columns)}. Expected title, transcript, "
                       f"comment (optional video_id, like_count), or the seed format (comments, titles, text)")
    by_key: dict[str, Video] = {}
    first_row: dict[str, int] = {}
    line_numbers = df.attrs.get("line_numbers")
    for i in range(len(df)):
        row = line_numbers[i] if line_numbers else i + 2 if path.suffix.lower() in (".xlsx", ".csv", ".tsv") else i + 1
        title, transcript = (_text(df, c, i, path, row) for c in ("title", "transcript"))
        comment = _text(df, "comment", i, path, row) if "comment" in df.columns else None
        if not _visible(transcript):
            raise VrpError(f"{path}: row {row}: empty or missing 'transcript'")
        vid = _text(df, "video_id", i, path, row) if "video_id" in df.columns else ""
        key = vid or hashlib.sha1(f"{title}\n{transcript}".encode()).hexdigest()[:10]
        v = by_key.setdefault(key, Video(video_id=key, title=title, transcript=transcript))
        first_row.setdefault(key, row)
        for name, value, known in (("transcript", transcript, v.transcript), ("title", title, v.title)):
            if value != known:
                raise VrpError(f"{path}: row {row}: video_id {vid!r} has a different {name} than row "
                               f"{first_row[key]}; all rows of one video must have the same title and transcript")
        if comment is None:
            continue
        if not comment:
            stats["comments_skipped_empty"] += 1
            continue
        like = None
        if "like_count" in df.columns and _text(df, "like_count", i, path, row):
            raw = df["like_count"].iloc[i]
            try:
                like = likes.parse_like_count(raw, strict=True)
            except ValueError as e:
                raise VrpError(f"{path}: row {row}: like_count {_cell(raw)!r} is not a like count: {e}; write it "
                               f"as a whole number such as 1234, 1,234, 1.2K or 2.3M") from None
        v.comments.append(Comment(text=comment, like_count=like))
    for v in by_key.values():
        if any(c.like_count is not None for c in v.comments):
            v.comments.sort(key=lambda c: -(c.like_count or 0))
        for r, c in enumerate(v.comments, 1):
            c.rank = r
    return list(by_key.values())


def _text(df: Any, column: str, i: int, path: Path, row: int) -> str:
    """Cell `column` of row index `i` as text (`_cell`); VrpError naming `path`, `row` and `column` if it holds a
    list or an object, or an unpaired UTF-16 surrogate (JSON's `"\\ud800"` escape alone: not a character, and no
    UTF-8 file can hold it)."""
    try:
        text = _cell(df[column].iloc[i])
    except ValueError as e:
        raise VrpError(f"{path}: row {row}: column {column!r} must be text ({e})") from None
    return clean.check_text(text, f"{path}: row {row}: column {column!r}")


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
        if not CollectDir(path).exists():
            data = DatasetDir(path)
            if data.train_path.is_file():
                return data.train_videos() + data.validation_videos(), {"format": "prepared dataset dir"}
            raise VrpError(f"{path}: directory has no videos.jsonl (collect dir) or train.jsonl (dataset dir)")

        videos, cstats = load_collect_dir(path)
        stats.update({k: v for k, v in cstats.items() if isinstance(v, int)})
        fmt = "collect dir"
    elif not path.exists():
        raise VrpError(f"{path}: file not found")
    elif path.suffix.lower() == ".jsonl" and _looks_like_videos(path):
        videos, fmt = read_videos(path), "video jsonl"
    else:
        df = _lower_column_names(_remove_nuls(_read_table(path, stats), path, stats), path)
        if len(df) == 0:
            raise VrpError(f"{path}: no rows")
        if "text" in df.columns and "title" not in df.columns:
            videos, fmt = load_seed_table(df, path, stats), "seed xlsx (LLaMA-2 [INST] text)"
        else:
            videos, fmt = load_user_table(df, path, stats, require_comments), "table (title, transcript, comment)"
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
    with open(path, encoding="utf-8-sig", errors="replace") as f:  # UTF-16/32 files are tables (see _read_table)
        first = clean.strip_format_chars(next((line for line in f if clean.strip_format_chars(line).strip()), ""))
    try:
        obj = json.loads(first)
    except (ValueError, RecursionError):  # JSONDecodeError, too deep, too long a number
        return '"video_id"' in first and '"comments"' in first  # a broken first line: let read_videos name it
    return isinstance(obj, dict) and "video_id" in obj and "transcript" in obj and "comment" not in obj
