"""Records that flow through the pipeline, and atomic file writing.

Knows: the `Video` / `Comment` dataclasses of a prepared dataset (one JSON line per video), how to read and write
JSON Lines, and how to write any output file atomically (temp file in the same directory + `os.replace`).
Does not know: where records come from (see `dataset`, `collected`) or how they are tokenized (see `prompts`).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator


class VrpError(Exception):
    """A user-facing error: bad input, bad flag, missing file. The CLI prints its message without a traceback."""


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
        """Build from a dict as written by `to_json`. Raises VrpError naming `where` on a missing field."""
        try:
            comments = [
                Comment(text=str(c["text"]), like_count=c.get("like_count"), rank=int(c.get("rank", i + 1)))
                for i, c in enumerate(d.get("comments") or [])
            ]
            return cls(video_id=str(d["video_id"]), title=str(d.get("title") or ""),
                       transcript=str(d["transcript"]), comments=comments)
        except (KeyError, TypeError, ValueError) as e:
            raise VrpError(f"{where}: not a video record ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`, on error delete it.

    Readers never see a half-written file, and a failed write leaves any previous file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line to `path` atomically; return the number of lines."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON Lines file. Blank lines are skipped. Raises VrpError naming the file and line on bad JSON."""
    path = Path(path)
    if not path.is_file():
        raise VrpError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise VrpError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise VrpError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append(obj)
    return rows


def read_videos(path: str | os.PathLike[str]) -> list[Video]:
    """Read a prepared dataset split (`train.jsonl`, `validation.jsonl`) into `Video` records."""
    return [Video.from_json(d, where=f"{path}:{i + 1}") for i, d in enumerate(read_jsonl(path))]
