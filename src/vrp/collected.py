"""The records of a collect dir written by `vrp collect`, and how they become `Video` records.

Knows: the fields of a `videos.jsonl` record (one JSON object per collected video: `id`, `url`, `title`,
`description`, `channel`, `upload_date`, `duration`, `category`, `transcript_source`, `transcript`
`[{start, end, text}]`, `comments` `[{id, text, like_count, author_is_uploader, is_pinned, parent, time_text}]`)
and of `skipped.jsonl` (`{id, url, reason, permanent, detail}`), and how collected rows become `vrp.records.Video`s:
transcript segments joined into clean text, comments cleaned (`vrp.clean`), filtered, de-duplicated and ranked by
like count (rank 1 = most liked; ties keep YouTube's "top" order).
Does not know: the dir's files and how they are appended and repaired (`vrp.artifacts.CollectDir`), how the data is
fetched (see `vrp.collect.fetch`) or how splits are made (see `vrp.prepare.run`).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from vrp import clean, likes
from vrp.artifacts import CollectDir
from vrp.errors import VrpError
from vrp.files import iter_jsonl_rows
from vrp.records import Comment, Video
from vrp.transcripts import Segment, segments_to_text

log = logging.getLogger(__name__)

VIDEO_DROP_REASONS = ("no_transcript", "no_usable_comments", "duplicate_video_id")
COMMENT_DROP_REASONS = ("duplicate_id", "reply", "by_uploader", "empty", "link_only", "timestamps_only",
                        "over_max_comments", "in_dropped_video")


def _transcript_text(value: Any, where: str, drop_annotations: bool) -> str:
    if isinstance(value, str):
        return clean.collapse_spaces(clean.check_text(value, f"{where}: field 'transcript'"))
    if not isinstance(value, list):
        raise VrpError(f"{where}: field 'transcript' must be a list of {{start, end, text}} segments or a string, "
                       f"got {type(value).__name__}")
    segments = [Segment.from_json(d, f"{where}: transcript[{i}]") for i, d in enumerate(value)]
    return segments_to_text(segments, drop_annotations=drop_annotations)


def clean_comments(raw: Any, where: str, drop_uploader: bool = True, max_comments: int | None = None,
                   max_comment_graphemes: int | None = None) -> tuple[list[Comment], Counter]:
    """Collected comment dicts -> ranked `Comment`s and a Counter of drop reasons (`COMMENT_DROP_REASONS`).

    Comments are de-duplicated by id, cleaned (`clean.clean_comment_text`), filtered
    (`clean.comment_drop_reason`), optionally cut to `max_comment_graphemes` grapheme clusters, ranked by like
    count (display text such as `1.2K` is parsed) with rank 1 = most liked, and capped at `max_comments`. A missing
    or unreadable like count (`null`, `"abc"`, `"Like"`) is unknown (None, never 0: tiers treat 0 as "low"); such
    comments rank after those with a count, in YouTube's order.
    Raises VrpError naming `where` and the field if `raw` is not a list of objects with a string `text`.
    """
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise VrpError(f"{where}: field 'comments' must be a list, got {type(raw).__name__}")
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or not isinstance(c.get("text"), str):
            raise VrpError(f"{where}: comments[{i}] must be an object with a string 'text', got {str(c)[:80]!r}")
        clean.check_text(c["text"], f"{where}: comments[{i}].text")
    unique, n_dup = clean.dedupe_by_id(raw)
    dropped: Counter = Counter({r: 0 for r in COMMENT_DROP_REASONS})
    dropped["duplicate_id"] += n_dup
    kept: list[tuple[int | None, int, str]] = []
    for order, c in enumerate(unique):
        text = clean.clean_comment_text(c["text"])
        reason = clean.comment_drop_reason(c, text, drop_uploader=drop_uploader)
        if reason:
            dropped[reason] += 1
            continue
        if max_comment_graphemes is not None:
            text = clean.truncate_graphemes(text, max_comment_graphemes)
        kept.append((likes.parse_like_count(c.get("like_count")), order, text))
    kept.sort(key=lambda t: (t[0] is None, -(t[0] or 0), t[1]))  # unknown counts after the known ones
    if max_comments is not None and len(kept) > max_comments:
        dropped["over_max_comments"] += len(kept) - max_comments
        kept = kept[:max_comments]
    return [Comment(text=text, like_count=likes, rank=i + 1) for i, (likes, _, text) in enumerate(kept)], dropped


def load_collect_dir(path: str | os.PathLike[str], drop_uploader_comments: bool = True,
                     drop_annotations: bool = True, max_comments: int | None = None,
                     max_comment_graphemes: int | None = None) -> tuple[list[Video], dict[str, Any]]:
    """Read a collect dir (or its `videos.jsonl`) into `Video` records plus stats for the dataset manifest: the
    list of `iter_collect_dir`'s videos and its stats."""
    stats: dict[str, Any] = {}
    videos = list(iter_collect_dir(path, stats, drop_uploader_comments, drop_annotations, max_comments,
                                   max_comment_graphemes))
    return videos, stats


def iter_collect_dir(path: str | os.PathLike[str], stats: dict[str, Any], drop_uploader_comments: bool = True,
                     drop_annotations: bool = True, max_comments: int | None = None,
                     max_comment_graphemes: int | None = None) -> Iterator[Video]:
    """The `Video` records of a collect dir (or its `videos.jsonl`), read one line at a time; `stats` (a dict,
    filled when the iterator is exhausted) gets the counts for the dataset manifest. Only the ids seen so far are
    held (to drop a duplicate id), not the videos.

    Videos with no transcript text or no usable comment are dropped, with one counted warning. A torn last line
    (a kill during `vrp collect`) is ignored and counted. Stats (flat, all ints but `source`): `source`,
    `videos_read`, `videos_kept`, `videos_dropped` and `videos_dropped_<reason>` for `VIDEO_DROP_REASONS`,
    `comments_read` (= kept + dropped), `comments_kept`, `comments_dropped` and `comments_dropped_<reason>` for
    `COMMENT_DROP_REASONS`, `torn_last_line` (0/1), `skipped_at_collection_<reason>` from `skipped.jsonl`.
    Raises VrpError naming file:line (and field) on a missing file, bad JSON, or a row without `id`, a bad
    `transcript` or bad `comments`.
    """
    path = Path(path)
    collect_dir = CollectDir(path if path.is_dir() else path.parent)
    file = collect_dir.videos_path if path.is_dir() else path
    if not file.is_file():
        raise VrpError(f"{file}: file not found (expected a collect dir written by `vrp collect`)")
    kept = comments_kept = 0
    seen: set[str] = set()
    vdrop: Counter = Counter({r: 0 for r in VIDEO_DROP_REASONS})
    cdrop: Counter = Counter({r: 0 for r in COMMENT_DROP_REASONS})
    read = comments_read = torn = 0
    for lineno, row in iter_jsonl_rows(file):
        where = f"{file}:{lineno}"
        if row is None:
            torn = 1
            log.warning("%s: ignoring a torn last line (the collector was interrupted while writing it)", where)
            continue
        read += 1
        vid = row.get("id")
        if not isinstance(vid, str) or not vid:
            raise VrpError(f"{where}: field 'id' is missing or not a string")
        if "transcript" not in row:
            raise VrpError(f"{where}: field 'transcript' is missing")
        transcript = _transcript_text(row["transcript"], where, drop_annotations)
        comments, dropped = clean_comments(row.get("comments"), where, drop_uploader_comments, max_comments,
                                           max_comment_graphemes)
        comments_read += len(row.get("comments") or [])
        cdrop.update(dropped)
        reason = ("duplicate_video_id" if vid in seen else "no_transcript" if not transcript
                  else "no_usable_comments" if not comments else None)
        seen.add(vid)
        if reason:
            vdrop[reason] += 1
            cdrop["in_dropped_video"] += len(comments)
            continue
        title = clean.collapse_spaces(clean.remove_invisible(clean.check_text(str(row.get("title") or ""),
                                                                              f"{where}: field 'title'")))
        kept += 1
        comments_kept += len(comments)
        yield Video(video_id=vid, title=title, transcript=transcript, comments=comments)
    n_dropped = sum(vdrop.values())
    if n_dropped:
        reasons = ", ".join(f"{k}: {v}" for k, v in vdrop.items() if v)
        log.warning("%s: dropped %d of %d videos (%s)", file, n_dropped, read, reasons)
    skipped = Counter(str(r.get("reason", "unknown")) for r in collect_dir.skipped().values())
    stats.update({"source": str(file), "videos_read": read, "videos_kept": kept, "videos_dropped": n_dropped})
    stats.update({f"videos_dropped_{k}": v for k, v in vdrop.items()})
    stats.update({"comments_read": comments_read, "comments_kept": comments_kept,
                  "comments_dropped": sum(cdrop.values())})
    stats.update({f"comments_dropped_{k}": v for k, v in cdrop.items()})
    stats["torn_last_line"] = torn
    stats.update({f"skipped_at_collection_{k}": v for k, v in sorted(skipped.items())})
