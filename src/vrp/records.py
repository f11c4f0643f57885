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
        """Build from a dict as written by `to_json`. Raises VrpError naming `where` and the field when a field is
        missing or has the wrong type: `video_id` a non-empty string (or integer), `title` a string or null,
        `transcript` a non-empty string, `comments` a list of `{text: str, like_count?: int, rank?: int}`."""
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
            like = int(like) if isinstance(like, float) and like.is_integer() else like
            if like is not None and (isinstance(like, bool) or not isinstance(like, int)):
                raise bad(f"comments[{i}].like_count", "an integer or null", like)
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise bad(f"comments[{i}].rank", "an integer", rank)
            comments.append(Comment(text=c["text"], like_count=like, rank=rank))
        return cls(video_id=vid, title=title or "", transcript=transcript, comments=comments)


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (`os.umask` alone sets it, briefly
    affecting files other threads create)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`, on error delete it.

    Readers never see a half-written file, and a failed write leaves any previous file untouched. The new file gets
    the mode of the file it replaces, else the usual mode of a new file (0666 minus the umask), not the private mode
    of a temp file. Raises VrpError naming `path` when it is a directory or cannot be written (permissions, a full
    disk, a parent that is a file).
    """
    path = Path(path)
    if path.is_dir():
        raise VrpError(f"{path}: is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise VrpError(f"{path}: cannot write ({e.strerror or e})") from None
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, (path.stat().st_mode & 0o7777) if path.is_file() else 0o666 & ~current_umask())
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        raise VrpError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(path: str | os.PathLike[str], what: str) -> None:
    """Raise VrpError naming `what` (a flag) unless `path` (a file or directory to be written, existing or not) can
    be created there: its nearest existing directory must accept a new file. Used before long work (generation,
    training), so that an unwritable output fails at once instead of after the work is done."""
    path = Path(path).absolute()
    anc = path if path.is_dir() else path.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise VrpError(f"{what}: cannot write {path} ({anc} is a file, not a directory)")
    try:
        with tempfile.TemporaryFile(dir=anc):
            pass
    except OSError as e:
        raise VrpError(f"{what}: cannot write {path} ({anc}: {e.strerror or e})") from None


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
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise VrpError(f"{path}:{lineno}: not UTF-8 text (bad byte at column {e.start + 1}); "
                               f"convert the file to UTF-8") from None
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
