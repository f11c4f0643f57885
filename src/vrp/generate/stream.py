"""Streamed, resumable JSON Lines output of `vrp generate`: each video's rows are appended as soon as they exist, and a
rerun with the same `--out` continues after the videos already written.

Knows: the sidecar `FILE.jsonl.meta.json` (`meta_path`) that says how the file was started (the input and every
option that shapes its rows, `run_meta`) and whether it is complete; how a rerun compares its options with it (a
different one is refused naming its flag: the rows would mix); how the file is locked while it is written (an
exclusive `flock` on the file itself, so a second `vrp generate` writing it is refused); and how a file cut by a kill
is resumed: a torn last line is repaired (`vrp.files.repair_torn_tail`), the videos in the file must be the first
ones of the input, in order, and the last video of a file that is not complete is generated again (a kill can stop
between two of its rows), its rows cut off the file first. A video's rows do not depend on the videos before it
(sampling is seeded with `seed` + the video's index, `vrp.generate.run.predict_videos`), so a resumed file holds the
rows an uninterrupted run writes (all but the `seconds` column, the wall time of each generation).
Does not know: decoding (`vrp.generate.run`), CSV / XLSX output, which is written once at the end
(`vrp.generate.run.write_predictions`).
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from vrp.errors import ConfigError, VrpError
from vrp.files import append_jsonl_line, loads_json, read_json_object, repair_torn_tail, write_json_atomic
from vrp.generate.config import GenerateConfig
from vrp.records import Video

META_SUFFIX = ".meta.json"
META_FORMAT = "vrp generate predictions"
META_VERSION = 1
HEAD_ROWS = 20  # rows `stream_predictions` keeps for the command's summary


@dataclass
class StreamResult:
    """What `stream_predictions` did: `skipped` videos were already in the file, `videos` were generated now with
    `rows` rows, the first of which (at most `HEAD_ROWS`) are `head`."""

    skipped: int
    videos: int
    rows: int
    head: list[dict[str, Any]]


def meta_path(out: str | os.PathLike[str]) -> Path:
    """The sidecar of a streamed predictions file: `preds.jsonl` -> `preds.jsonl.meta.json`."""
    out = Path(out)
    return out.with_name(out.name + META_SUFFIX)


def _where(value: str | None) -> str | None:
    """A path as an absolute path when it names an existing file or dir (a rerun from another directory gives the
    same value), else as given (a model id such as `smollm2-135m`)."""
    if value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def run_meta(cfg: GenerateConfig, input_path: str | None, title: str, transcript: str | None,
             max_videos: int) -> dict[str, Any]:
    """The options a streamed file is started with: every `GenerateConfig` field, with paths made absolute, and the
    input (`input` path, `title`, the sha256 of a `transcript` text, `max_videos`)."""
    opts = dataclasses.asdict(cfg)
    for k in ("model", "run"):
        opts[k] = _where(opts[k])
    opts.update(input=_where(input_path), title=title, max_videos=max_videos,
                transcript=None if transcript is None else hashlib.sha256(transcript.encode("utf-8")).hexdigest())
    return {"format": META_FORMAT, "version": META_VERSION, "options": opts, "complete": False}


def check_same_options(out: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to continue `out` with options other than those it was started with. Raises ConfigError naming the
    first option that differs (its flag), with the value of the file and of this run; ConfigError('out') for a
    sidecar of another format or version."""
    if old.get("format") != META_FORMAT or old.get("version") != META_VERSION or not isinstance(old.get("options"),
                                                                                                 dict):
        raise ConfigError("out", f"{meta_path(out)} is not the sidecar of a streamed `vrp generate` (or of another "
                                 f"version); pass `overwrite` to start {out} over")
    was, now = old["options"], new["options"]
    for k in now:
        if was.get(k) != now[k]:
            then, asked = ("another text", "this one") if k == "transcript" else (repr(was.get(k)), repr(now[k]))
            raise ConfigError(k, f"{out} was started with `{k}` {then}, this run asks for {asked}: their rows would "
                                 f"mix; rerun with the options it was started with ({meta_path(out).name}), write to "
                                 f"another file, or pass `overwrite` to start it over")


def _video_groups(out: Path) -> list[tuple[str, int]]:
    """`(video_id, byte offset of its first row)` of each run of rows of one video in `out` (complete lines: after
    `repair_torn_tail`), in file order. Raises VrpError naming the line of one that is not a JSON object."""
    groups: list[tuple[str, int]] = []
    offset = 0
    with open(out, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                row = loads_json(raw.decode("utf-8", errors="replace"), f"{out}:{lineno}", name_line=False)
                if not isinstance(row, dict):
                    raise VrpError(f"{out}:{lineno}: expected a JSON object, got {type(row).__name__}")
                vid = str(row.get("video_id"))
                if not groups or groups[-1][0] != vid:
                    groups.append((vid, offset))
            offset += len(raw)
    return groups


def resume_point(out: Path, videos: Sequence[Video], complete: bool) -> int:
    """How many videos of `videos` `out` already holds, after making it fit to be continued: a torn last line is
    repaired; when the file is not `complete` the rows of its last video are cut off (a kill may have stopped between
    two of them) and that video counts as not written. Raises ConfigError('input') when the videos in the file are
    not the first ones of `videos`, in order (another input)."""
    repair_torn_tail(out)
    groups = _video_groups(out)
    ids = [v.video_id for v in videos]
    if [g[0] for g in groups] != ids[:len(groups)]:
        raise ConfigError("input", f"{out} holds predictions for other videos than the first {len(groups)} of this "
                                   f"input; write to another file or pass `overwrite` to start it over")
    if groups and not complete:
        os.truncate(out, groups[-1][1])
        groups.pop()
    return len(groups)


def stream_predictions(out: str | os.PathLike[str], videos: Sequence[Video], meta: dict[str, Any], overwrite: bool,
                       generate: Callable[[int], Iterator[list[dict[str, Any]]]]) -> StreamResult:
    """Write the rows of every video of `videos` to the JSON Lines file `out` as they come: `generate(start)` yields
    each video's rows from `videos[start]` on (`vrp.generate.run.predict_videos`); each row is one appended, flushed
    and fsynced line (`vrp.files.append_jsonl_line`).

    A new file (or, with `overwrite`, any file) starts with its sidecar (`meta_path`, `meta` from `run_meta`); an
    existing file with a sidecar is continued after its videos (`resume_point`) when `meta` has its options
    (`check_same_options`), and marked complete in the sidecar when every video is in. Returns a `StreamResult`
    (only the first `HEAD_ROWS` rows stay in memory). Raises ConfigError('out') when `out` exists without a
    sidecar (not a streamed file; `overwrite` replaces it) or another command writes it now; ConfigError naming
    the option that differs from the file's; what `generate` raises (the rows written so far stay, for a rerun)."""
    out = Path(out)
    side = meta_path(out)
    fresh = overwrite or not out.exists()
    if not fresh:
        if not side.is_file():
            raise ConfigError("out", f"{out} exists and is not a streamed `vrp generate` file (no {side.name}); pass "
                                     f"`overwrite` to replace it")
        check_same_options(out, read_json_object(side, "predictions sidecar"), meta)
    fd = None if fresh else _open_locked(out, create=False)
    try:
        done = 0 if fresh else resume_point(out, videos, bool(read_json_object(side, "predictions sidecar")
                                                                .get("complete")))
        count, head = 0, []
        for rows in generate(done) if done < len(videos) else ():
            if fd is None:  # a new file comes with the first video's rows: an error before them leaves no file
                fd = _start(out, side, meta, overwrite)
            elif count == 0:
                write_json_atomic(side, {**meta, "complete": False})
            for row in rows:
                append_jsonl_line(out, row)
            count += len(rows)
            head += rows[:max(0, HEAD_ROWS - len(head))]
        if fd is None:  # nothing to generate (no video)
            fd = _start(out, side, meta, overwrite)
        write_json_atomic(side, {**meta, "complete": True, "videos": len(videos)})
        return StreamResult(done, len(videos) - done, count, head)
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _start(out: Path, side: Path, meta: dict[str, Any], overwrite: bool) -> int:
    """Create (or with `overwrite` empty) `out` under its lock, its sidecar written first (a file with rows always
    has one); returns the locked file descriptor."""
    fd = _open_locked(out, create=not overwrite)
    write_json_atomic(side, {**meta, "complete": False})
    os.ftruncate(fd, 0)
    return fd


def _open_locked(out: Path, create: bool) -> int:
    """Open `out` (created when `create`; ConfigError('out') when another command created it since the check) and
    hold an exclusive `flock` on it; ConfigError('out') when another process holds one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(out, os.O_RDWR | os.O_CREAT | (os.O_EXCL if create else 0), 0o666)
    except FileExistsError:
        raise ConfigError("out", f"{out}: another command created it while this one ran; not replaced (pass "
                                 f"`overwrite` to replace it)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError("out", f"{out}: another `vrp generate` is writing it now") from None
    return fd
