"""Video/comment data from the supported sources, read into `Video` records: rows grouped into videos, streamed.

Knows: the original project's seed xlsx (`comments`, `titles`, `text`, `length`: LLaMA-2 `[INST]` strings, the rows
of one video adjacent with equal prompts up to a truncated tail), a test xlsx with only `text` (no comments),
user tables (CSV, JSONL, Parquet, xlsx) with `title`, `transcript`, `comment` and optional `video_id`, `like_count`,
and collect dirs written by `vrp collect` (via `vrp.collected`). Table cells are read as text exactly as written, in
every format (`007`, `1.10`, `1e5`, `NA` stay what they are; reading and shape checks live in `vrp.tables`), CSV/JSONL
bytes in any encoding `vrp.charsets` reads, and like counts by the one parser `likes.parse_like_count` (strict: a
value that is not a count is an error naming file, row and value).
Streaming (`iter_source`): tables are read in chunks of rows (`vrp.table_chunks`) and the rows of a user table are
grouped into videos in a SQLite file on disk (`vrp.grouping`: the rows of one video may be anywhere in the table),
collect dirs and video JSONL files a line at a time; memory is bounded by a chunk and one video's comments, not by
the source. The videos come out in the order of their first row, as `load_source` (the same, as a list) gives them.
Does not know: tokens or models, the split or the dataset dir (`vrp.prepare`).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vrp import clean, likes
from vrp.artifacts import CollectDir, DatasetDir
from vrp.collected import iter_collect_dir
from vrp.errors import VrpError
from vrp.grouping import VideoGroups
from vrp.records import Comment, Video, iter_videos
from vrp.table_chunks import CHUNK_ROWS, TableChunk, iter_table_chunks
from vrp.tables import TABLE_EXTS, read_jsonl_table  # noqa: F401  (read_jsonl_table: part of this module's API)
from vrp.tables import cell as _cell
from vrp.tables import remove_nuls

log = logging.getLogger(__name__)

SEED_PREFIX_CHARS = 200  # rows of one seed video share at least this prompt prefix (their tails differ by truncation)
_ASCII_VISIBLE = re.compile("[!-~]")  # printable ASCII: never removed by `clean.remove_invisible`


def _split_inst(text: str, path: Path, row: int) -> tuple[str, str]:
    """Split a LLaMA-2 chat string `<s>[INST] prompt [/INST] answer </s>` into (prompt, answer)."""
    if "[/INST]" not in text:
        raise VrpError(f"{path}: row {row}: column 'text' has no '[/INST]' marker (not the seed LLaMA-2 format)")
    prompt, answer = text.split("[/INST]", 1)
    prompt = prompt.replace("<s>", "").replace("[INST]", "").strip()
    answer = answer.replace("</s>", "").strip()
    return prompt, answer


def seed_videos(chunks: Iterable[TableChunk], path: Path, stats: Counter) -> Iterator[Video]:
    """Group seed-format rows (chunks of the columns `text` and optional `comments`) into videos.

    Grouping: consecutive rows are one video when their prompts (the text between `[INST]` and `[/INST]`) agree on
    the first `SEED_PREFIX_CHARS` characters (or all of the shorter one). The longest prompt of the group becomes the
    transcript (the others are the same text truncated earlier). Title and transcript are not separable in this
    format, so `title` is '' and the transcript holds both. Comment rank = order within the group (the seed lists
    most, middle, least liked). Rows with an empty comment are skipped and counted. A file without a `comments`
    column (the test set) gives videos without comments. Needs only the current group in memory.
    """
    group: list[tuple[str, str]] = []
    prev = None
    has_comments = None
    for chunk in chunks:
        has_comments = "comments" in chunk.columns
        texts, comment_cells = chunk.columns["text"], chunk.columns.get("comments")
        for i, row in enumerate(chunk.rows):
            text = _cell(texts[i])
            if not text:
                raise VrpError(f"{path}: row {row}: empty 'text'")
            prompt, answer = _split_inst(text, path, row)
            if not prompt:
                raise VrpError(f"{path}: row {row}: empty prompt (nothing between [INST] and [/INST])")
            comment = _cell(comment_cells[i]) if comment_cells is not None else answer
            k = min(len(prompt), SEED_PREFIX_CHARS, len(prev) if prev else 0)
            if prev is not None and prompt[:k] == prev[:k]:
                group.append((prompt, comment))
            else:
                if group:
                    yield _seed_video(group, bool(has_comments), stats)
                group = [(prompt, comment)]
            prev = prompt
    if group:
        yield _seed_video(group, bool(has_comments), stats)
    stats["grouping"] = f"adjacent rows whose prompts share the first {SEED_PREFIX_CHARS} characters"  # type: ignore


def _seed_video(group: list[tuple[str, str]], has_comments: bool, stats: Counter) -> Video:
    transcript = max((p for p, _ in group), key=len)
    vid = "seed-" + hashlib.sha1(transcript[:SEED_PREFIX_CHARS].encode()).hexdigest()[:10]
    comments = []
    for _, c in group:
        if c:
            comments.append(Comment(text=c, rank=len(comments) + 1))
        elif has_comments:
            stats["comments_skipped_empty"] += 1
    return Video(video_id=vid, title="", transcript=transcript, comments=comments)


def lower_column_names(names: list[str], path: Path) -> list[str]:
    """`names` stripped and lower-cased (`Title` and ` title ` are the `title` column, as spreadsheets are often
    written). Raises VrpError naming `path` and the columns when two names become one."""
    lowered = [str(c).strip().lower() for c in names]
    clash = sorted({n for n in lowered if lowered.count(n) > 1})
    if clash:
        same = [str(c) for c in names if str(c).strip().lower() in clash]
        raise VrpError(f"{path}: columns {same} differ only in case or spaces; keep one of them")
    return lowered


def user_videos(chunks: Iterable[TableChunk], names: list[str], path: Path, stats: Counter,
                require_comments: bool = True, scratch: Path | None = None) -> Iterator[Video]:
    """Group `title`, `transcript`, `comment` rows (chunks with the lower-cased columns `names`) into videos: by
    `video_id` if present, else by title + transcript, in a SQLite file in a temporary directory under `scratch`
    (default: the system's temporary directory; `vrp.grouping`), so the rows of one video may be anywhere in the
    table. Comments are ranked by `like_count` (descending) when present, else in file order. Rows with an empty
    comment are skipped and counted; an empty transcript is an error naming the row, and so is a row whose title or
    transcript differs from its video's first row. Without `require_comments` (videos to predict for) the `comment`
    column may be missing: the videos have no comments. Videos come in the order of their first row."""
    needed = ("title", "transcript", "comment") if require_comments else ("title", "transcript")
    missing = [c for c in needed if c not in names]
    if missing:
        raise VrpError(f"{path}: missing column(s) {missing}; found {names}. Expected title, transcript, "
                       f"comment (optional video_id, like_count), or the seed format (comments, titles, text)")
    has = set(names)
    with tempfile.TemporaryDirectory(prefix="vrp-groups-", dir=scratch, ignore_cleanup_errors=True) as tmp, \
            VideoGroups(Path(tmp) / "groups.sqlite") as groups:
        prev_raw: Any = None
        transcript, visible = "", False
        for chunk in chunks:
            cols = chunk.columns
            for i, row in enumerate(chunk.rows):
                title = _text(cols, "title", i, path, row)
                raw = cols["transcript"][i]
                if not (isinstance(raw, str) and raw == prev_raw):  # the rows of a video repeat its transcript
                    transcript = _text(cols, "transcript", i, path, row)
                    visible, prev_raw = _visible(transcript), raw
                comment = _text(cols, "comment", i, path, row) if "comment" in has else None
                if not visible:
                    raise VrpError(f"{path}: row {row}: empty or missing 'transcript'")
                vid = _text(cols, "video_id", i, path, row) if "video_id" in has else ""
                key = vid or hashlib.sha1(f"{title}\n{transcript}".encode()).hexdigest()[:10]
                ord_, differs, first = groups.video(key, title, transcript, row)
                if differs:
                    raise VrpError(f"{path}: row {row}: video_id {vid!r} has a different {differs} than row "
                                   f"{first}; all rows of one video must have the same title and transcript")
                if comment is None:
                    continue
                if not comment:
                    stats["comments_skipped_empty"] += 1
                    continue
                groups.add_comment(ord_, comment, _like_count(cols, i, path, row) if "like_count" in has else None)
        for key, title, transcript, rows in groups.videos():
            comments = [Comment(text=text, like_count=like) for text, like in rows]
            if any(c.like_count is not None for c in comments):
                comments.sort(key=lambda c: -(c.like_count or 0))
            for r, c in enumerate(comments, 1):
                c.rank = r
            yield Video(video_id=key, title=title, transcript=transcript, comments=comments)


def _like_count(cols: dict[str, list[Any]], i: int, path: Path, row: int) -> int | None:
    """The like count of row index `i` (None when the cell is empty); VrpError naming the row for a value that is
    not a like count."""
    if not _text(cols, "like_count", i, path, row):
        return None
    raw = cols["like_count"][i]
    try:
        return likes.parse_like_count(raw, strict=True)
    except ValueError as e:
        raise VrpError(f"{path}: row {row}: like_count {_cell(raw)!r} is not a like count: {e}; write it "
                       f"as a whole number such as 1234, 1,234, 1.2K or 2.3M") from None


def _text(cols: dict[str, list[Any]], column: str, i: int, path: Path, row: int) -> str:
    """Cell `column` of row index `i` (`cols`: the chunk's columns as lists) as text (`_cell`); VrpError naming
    `path`, `row` and `column` if it holds a list or an object, or an unpaired UTF-16 surrogate (JSON's `"\\ud800"`
    escape alone: not a character, and no UTF-8 file can hold it)."""
    try:
        text = _cell(cols[column][i])
    except ValueError as e:
        raise VrpError(f"{path}: row {row}: column {column!r} must be text ({e})") from None
    return clean.check_text(text, f"{path}: row {row}: column {column!r}")


def _visible(text: str) -> bool:
    """True when `text` has something besides whitespace and invisible characters (zero-width spaces, BOMs)."""
    return bool(_ASCII_VISIBLE.search(text)) or bool(clean.remove_invisible(text).strip())


def _drop_blank_comments(v: Video, stats: Counter) -> None:
    """Drop comments that are only whitespace or invisible characters (they would train the model to say
    nothing); the kept ones are ranked again 1..n in their order."""
    kept = [c for c in v.comments if _visible(c.text)]
    if len(kept) != len(v.comments):
        stats["comments_skipped_empty"] += len(v.comments) - len(kept)
        for r, c in enumerate(kept, 1):
            c.rank = r
        v.comments = kept


def table_videos(path: Path, stats: Counter, require_comments: bool = True, scratch: Path | None = None,
                 chunk_rows: int = CHUNK_ROWS) -> Iterator[Video]:
    """The videos of a table file, read `chunk_rows` rows at a time: the seed format (`seed_videos`) when it has a
    `text` column and no `title`, else a user table (`user_videos`). Sets `stats["format"]`; NUL characters removed
    from cells are counted in `stats["nul_characters_removed"]` and logged once."""
    chunks = iter_table_chunks(path, stats, chunk_rows)
    first = next((c for c in chunks if len(c)), None)
    if first is None:
        raise VrpError(f"{path}: no rows")
    names = lower_column_names(list(first.columns), path)
    nuls = Counter()

    def lowered() -> Iterator[TableChunk]:
        for chunk in itertools.chain([first], chunks):
            if len(chunk):
                chunk = TableChunk(dict(zip(names, chunk.columns.values())), chunk.rows)
                nuls["n"] += remove_nuls(chunk.columns)
                yield chunk

    if "text" in names and "title" not in names:
        stats["format"] = "seed xlsx (LLaMA-2 [INST] text)"  # type: ignore[assignment]
        yield from seed_videos(lowered(), path, stats)
    else:
        stats["format"] = "table (title, transcript, comment)"  # type: ignore[assignment]
        yield from user_videos(lowered(), names, path, stats, require_comments, scratch)
    if nuls["n"]:
        log.warning("%s: removed %d NUL character(s) from text cells", path, nuls["n"])
        stats["nul_characters_removed"] += nuls["n"]


def iter_source(path: str | Path, require_comments: bool = True, stats: Counter | None = None,
                scratch: Path | None = None, chunk_rows: int = CHUNK_ROWS) -> Iterator[Video]:
    """The videos of any supported source, one at a time, in source order; `stats` (a Counter, filled as the
    videos are read, complete when the iterator is exhausted) gets the manifest's counts and `format`.

    Videos with no usable comment are dropped with a counted warning when `require_comments`. Temporary files
    (the grouping database of a table) go under `scratch` (default: the system's temporary directory). Raises
    VrpError for a missing file, unknown extension, missing columns, bad rows, or an empty result.
    """
    path = Path(path)
    stats = Counter() if stats is None else stats
    if path.is_dir():
        if not CollectDir(path).exists():
            data = DatasetDir(path)
            if data.train_path.is_file():
                stats["format"] = "prepared dataset dir"  # type: ignore[assignment]
                yield from iter_videos(data.train_path)
                if data.validation_path.is_file():
                    yield from iter_videos(data.validation_path)
                return
            raise VrpError(f"{path}: directory has no videos.jsonl (collect dir) or train.jsonl (dataset dir)")
        stats["format"] = "collect dir"  # type: ignore[assignment]
        cstats: dict[str, Any] = {}
        yield from _usable(iter_collect_dir(path, cstats), path, stats, require_comments)
        stats.update({k: v for k, v in cstats.items() if isinstance(v, int)})
        return
    if not path.exists():
        raise VrpError(f"{path}: file not found")
    if path.suffix.lower() == ".jsonl" and _looks_like_videos(path):
        stats["format"] = "video jsonl"  # type: ignore[assignment]
        videos: Iterator[Video] = iter_videos(path)
    else:
        videos = table_videos(path, stats, require_comments, scratch, chunk_rows)
    yield from _usable(videos, path, stats, require_comments)


def _usable(videos: Iterable[Video], path: Path, stats: Counter, require_comments: bool) -> Iterator[Video]:
    """`videos` without blank comments (`_drop_blank_comments`) and, with `require_comments`, without the videos
    left with none (counted, one warning at the end); VrpError when no video is left."""
    n = skipped = 0
    for v in videos:
        _drop_blank_comments(v, stats)
        if require_comments and not v.comments:
            skipped += 1
            continue
        n += 1
        yield v
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} video(s) with zero usable comments", stacklevel=2)
        stats["videos_skipped_no_comments"] += skipped
    if not n:
        raise VrpError(f"{path}: no usable videos")


def load_source(path: str | Path, require_comments: bool = True) -> tuple[list[Video], dict[str, Any]]:
    """Read any supported source into a list of videos plus a stats dict for the manifest (`iter_source`, read
    whole). Raises VrpError for a missing file, unknown extension, missing columns, bad rows, or an empty result."""
    stats: Counter = Counter()
    videos = list(iter_source(path, require_comments, stats))
    out = {k: v for k, v in stats.items() if k != "format"}
    out["format"] = stats["format"]
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
