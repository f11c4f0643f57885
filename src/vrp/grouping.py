"""Rows of a table grouped into videos on disk (`VideoGroups`), so that a table larger than memory is grouped
exactly, whatever the distance between the rows of one video.

Knows: a SQLite database file (Python's `sqlite3`, the SQLite B-tree on disk with a bounded page cache) with one row
per video (`videos`: its order of first appearance, key, first row, title and transcript, and 16-byte BLAKE2b
digests of the title and transcript to compare later rows with) and one row per comment (`comments`, a table
clustered by (video order, row order), so reading it in key order is a scan, not a sort). Looking up a row's video
is one indexed query (none when the previous row was of the same video, the usual layout); the videos come back in
the order of their first row, each with its comments in row order, as a dict grouping in memory would give them.
Does not know: files, columns or what a row means (`vrp.sources`), nor ranking comments.
"""
from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from vrp.errors import VrpError

CACHE_KIB = 32 * 1024  # SQLite page cache per connection: memory stays bounded whatever the table's size
BATCH = 10_000         # comments inserted per executemany

_SCHEMA = """
CREATE TABLE videos (ord INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, first_row INTEGER NOT NULL,
                     title_digest BLOB NOT NULL, transcript_digest BLOB NOT NULL, title TEXT NOT NULL,
                     transcript TEXT NOT NULL);
CREATE TABLE comments (ord INTEGER NOT NULL, seq INTEGER NOT NULL, text TEXT NOT NULL, like_count INTEGER,
                       PRIMARY KEY (ord, seq)) WITHOUT ROWID;
"""


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class VideoGroups:
    """Videos keyed by a string, built row by row in a SQLite file at `path` (created; deleted by `close`).

    Use: `video(key, title, transcript, row)` for each row (returns the video's index and whether title and
    transcript match its first row), `add_comment(...)` for the row's comment, then iterate `videos()`.
    Raises VrpError naming `path` when the database cannot be written (a full disk)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.executescript(f"PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-{CACHE_KIB}; "
                                   f"PRAGMA temp_store=FILE; BEGIN; {_SCHEMA}")
        except sqlite3.OperationalError as e:  # an unwritable directory, a full disk
            raise VrpError(f"{self.path}: cannot write the grouping database ({e})") from None
        self._pending: list[tuple[int, int, str, int | None]] = []
        self._seq = 0
        self.count = 0  # videos so far
        # the previous row's video: (key, ord, first_row, title, transcript), strings equal to its first row's
        self._last: tuple[str, int, int, str, str] | None = None

    def video(self, key: str, title: str, transcript: str, row: int) -> tuple[int, str | None, int]:
        """(index of the video `key` in order of first appearance, the name of the field that differs from the
        video's first row - 'transcript' or 'title' - or None, the number of that first row). A new key starts a
        video with this row's title and transcript."""
        last = self._last
        if last is not None and last[0] == key:
            _, ord_, first, t0, tr0 = last
            return ord_, ("transcript" if transcript != tr0 else "title" if title != t0 else None), first
        found = self._run("SELECT ord, first_row, title_digest, transcript_digest FROM videos WHERE key = ?",
                          (key,)).fetchone()
        if found is None:
            ord_ = self.count
            self._run("INSERT INTO videos VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (ord_, key, row, _digest(title), _digest(transcript), title, transcript))
            self.count += 1
            self._last = (key, ord_, row, title, transcript)
            return ord_, None, row
        ord_, first, title_digest, transcript_digest = found
        differs = ("transcript" if _digest(transcript) != transcript_digest
                   else "title" if _digest(title) != title_digest else None)
        if differs is None:
            self._last = (key, ord_, first, title, transcript)
        return ord_, differs, first

    def add_comment(self, ord_: int, text: str, like_count: int | None) -> None:
        """Append a comment to video `ord_` (after its earlier ones)."""
        self._pending.append((ord_, self._seq, text, like_count))  # like counts stop at 10^12 (`vrp.likes`)
        self._seq += 1
        if len(self._pending) >= BATCH:
            self._flush()

    def videos(self) -> Iterator[tuple[str, str, str, list[tuple[str, int | None]]]]:
        """(key, title, transcript, [(comment, like count), ...]) of every video in order of first appearance,
        the comments in row order. Reads the database in two ordered scans."""
        self._flush()
        comments = self._db.execute("SELECT ord, text, like_count FROM comments ORDER BY ord, seq")
        nxt = comments.fetchone()
        for ord_, key, title, transcript in self._db.execute(
                "SELECT ord, key, title, transcript FROM videos ORDER BY ord"):
            own: list[tuple[str, int | None]] = []
            while nxt is not None and nxt[0] == ord_:
                own.append((nxt[1], nxt[2]))
                nxt = comments.fetchone()
            yield key, title, transcript, own

    def close(self) -> None:
        """Close and delete the database file."""
        self._db.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "VideoGroups":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush(self) -> None:
        if self._pending:
            self._run("INSERT INTO comments VALUES (?, ?, ?, ?)", self._pending, many=True)
            self._pending = []

    def _run(self, sql: str, args: object, many: bool = False) -> sqlite3.Cursor:
        try:
            return self._db.executemany(sql, args) if many else self._db.execute(sql, args)  # type: ignore[arg-type]
        except sqlite3.OperationalError as e:  # "database or disk is full", an unwritable directory
            raise VrpError(f"{self.path}: cannot write the grouping database ({e})") from None
