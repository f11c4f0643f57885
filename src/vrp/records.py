"""Records that flow through the pipeline: a video with its title, transcript and comments.

Knows: the `Video` / `Comment` dataclasses of a prepared dataset (one JSON line per video) and their JSON form,
with validation that names the line and field of a bad record.
Does not know: where records come from (see `vrp.prepare.run`, `vrp.collect`), how files are written (see `vrp.files`)
or how records are tokenized (see `vrp.prompts`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from vrp.clean import check_text
from vrp.errors import VrpError
from vrp.files import iter_jsonl
from vrp.likes import parse_like_count


@dataclass
class Comment:
    """One viewer comment.

    text: the comment text (cleaned). like_count: likes when known (None otherwise).
    rank: 1-based position among the video's comments, 1 = most liked (or first in the source order).
    """

    text: str
    like_count: int | None = None
    rank: int = 1


@dataclass
class Video:
    """One video with its comments: the unit of splitting (a video is never in two splits)."""

    video_id: str
    title: str
    transcript: str
    comments: list[Comment] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-lines dict `{video_id, title, transcript, comments: [{text, like_count?, rank}]}`."""
        d = asdict(self)
        for c in d["comments"]:
            if c.get("like_count") is None:
                c.pop("like_count", None)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "") -> "Video":
        """Build from a dict as written by `to_json`. Raises VrpError naming `where` and the field when a field is
        missing or has the wrong type: `video_id` a non-empty string (or integer), `title` a string or null,
        `transcript` a non-empty string, `comments` a list of `{text: str, like_count?, rank?: int}`, where a
        like count is read by `likes.parse_like_count(strict=True)` (`1234`, `1234.0`, `"1,234"`, `"1.2K"`)."""
        def bad(field_: str, want: str, got: Any) -> VrpError:
            shown = json.dumps(got, ensure_ascii=False, default=str)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            return VrpError(f"{where}: field {field_!r} must be {want}, got {shown}")

        if not isinstance(d, dict):
            raise bad("(record)", "a JSON object", d)
        vid = d.get("video_id")
        if isinstance(vid, int) and not isinstance(vid, bool):
            vid = str(vid)
        if not isinstance(vid, str) or not vid.strip():
            raise bad("video_id", "a non-empty string", vid)
        title = d.get("title")
        if title is not None and not isinstance(title, str):
            raise bad("title", "a string", title)
        transcript = d.get("transcript")
        if not isinstance(transcript, str) or not transcript.strip():
            raise bad("transcript", "a non-empty string", transcript)
        raw = d.get("comments")
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise bad("comments", "a list of {text, like_count?, rank?} objects", raw)
        comments = []
        for i, c in enumerate(raw):
            if not isinstance(c, dict) or not isinstance(c.get("text"), str):
                raise bad(f"comments[{i}].text", "a string", c.get("text") if isinstance(c, dict) else c)
            like, rank = c.get("like_count"), c.get("rank", i + 1)
            if like is not None:
                try:  # the one like-count parser: 1234, 1234.0, "1,234", "1.2K"
                    like = parse_like_count(like, strict=True)
                except ValueError:
                    raise bad(f"comments[{i}].like_count", "a like count (1234, \"1,234\", \"1.2K\") or null",
                              like) from None
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise bad(f"comments[{i}].rank", "an integer", rank)
            comments.append(Comment(text=c["text"], like_count=like, rank=rank))
        check_text(title or "", f"{where}: field 'title'")
        check_text(transcript, f"{where}: field 'transcript'")
        for i, c in enumerate(comments):
            check_text(c.text, f"{where}: field 'comments[{i}].text'")
        return cls(video_id=vid, title=title or "", transcript=transcript, comments=comments)


def read_videos(path: str | os.PathLike[str]) -> list[Video]:
    """Read a prepared dataset split (`train.jsonl`, `validation.jsonl`) into `Video` records."""
    return list(iter_videos(path))


def iter_videos(path: str | os.PathLike[str]) -> Iterator[Video]:
    """The `Video` records of a video JSON Lines file (a dataset split), read one line at a time. Raises VrpError
    naming the file and line (`vrp.files.iter_jsonl`, `Video.from_json`)."""
    for lineno, d in iter_jsonl(path):
        yield Video.from_json(d, where=f"{path}:{lineno}")
