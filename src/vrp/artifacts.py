"""The directories vrp writes and reads, as typed objects: `CollectDir`, `DatasetDir`, `ReportDir` here, and the
base class of `vrp.rundir.RunDir`.

Knows: each directory's file names and layout, the one fingerprint of a dataset's split files, and how each file is
written (atomically, append-only for the collector's JSONL files; one writing command per dir, `vrp.locks`), and which
directories `overwrite` may replace (`_Dir.check_replaceable`: one recognisably of its kind - a run dir has
config.yaml or checkpoints/, a dataset dir its split files or manifest.json, a report dir report.md or a report's
metrics.json - that is not the current directory, the root, the home directory or one holding them, nor an input).
Does not know: what the records mean (`vrp.records`, `vrp.collected`), how a run is trained, scored or served.
Errors: a missing or wrong directory is a `ConfigError` naming the argument that gave it (`run`, `checkpoint`,
`data`, `out`), so that the CLI can name its flag.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

from vrp.errors import ConfigError, VrpError
from vrp.files import (
    append_jsonl_line,
    check_writable,
    current_umask,
    iter_jsonl_rows,
    read_json_object,
    repair_torn_tail,
    write_json_atomic,
)
from vrp.locks import LOCK_NAME, DirLock
from vrp.records import Video, iter_videos, read_videos


class _In:
    """A file or subdirectory of a `_Dir`, as an attribute: `config_path = _In("config.yaml")` -> `dir.path / name`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else obj.path / self.name


class _Dir:
    """A directory given by its path; `str()` and `os.fspath()` give the path. `KIND` and `MARKERS` say what makes a
    directory recognisably one of this kind (any marker entry present), which `overwrite` requires."""

    KIND = "vrp output"
    MARKERS: tuple[str, ...] = ()

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def is_nonempty(self) -> bool:
        """True when the path is a directory with at least one entry besides a lock file (`vrp.locks.LOCK_NAME`:
        a command holding the lock on a new directory has created it, and a killed one may leave it)."""
        return self.path.is_dir() and any(p.name != LOCK_NAME for p in self.path.iterdir())

    def lock(self, command: str, field: str = "out") -> DirLock:
        """The lock a command (`vrp train`, ...) holds while it writes this directory (`vrp.locks.DirLock`; use it
        as a context manager)."""
        return DirLock(self.path, command, field)

    def is_recognised(self) -> bool:
        """True when the directory holds one of `MARKERS` (it is recognisably this kind of output)."""
        return any((self.path / m).exists() for m in self.MARKERS)

    def _what_marks_it(self) -> str:
        return " or ".join(self.MARKERS)

    def check_replaceable(self, inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = (),
                          field: str = "out") -> None:
        """Raise ConfigError(`field`) unless `overwrite` may replace this non-empty directory: it must not be the
        current directory or hold it, the filesystem root, the home directory or one holding it, nor equal or hold
        an input of the command (`inputs`: (field, path) pairs; a value that is not an existing path, such as a
        model name, is skipped), and it must be recognisably this kind of output (`is_recognised`)."""
        here = self.path.expanduser().resolve()
        try:
            cwd: Path | None = Path.cwd().resolve()
        except OSError:  # the current directory was deleted
            cwd = None
        if cwd is not None and (here == cwd or here in cwd.parents):
            raise ConfigError(field, f"{self.path} is the current directory or holds it; it will not be deleted")
        home = Path.home().expanduser().resolve()
        if here == Path(here.anchor) or here == home or here in home.parents:
            raise ConfigError(field, f"{self.path} is the filesystem root or the home directory or holds it; it will "
                                     f"not be deleted")
        for name, given in inputs:
            if not given or not Path(given).expanduser().exists():
                continue
            source = Path(given).expanduser().resolve()
            if source == here or here in source.parents:
                raise ConfigError(field, f"{self.path} is or holds an input of the command, `{name}` ({given}); "
                                         f"it will not be deleted")
        if not self.is_recognised():
            raise ConfigError(field, f"{self.path} is not a {self.KIND} directory (no {self._what_marks_it()}); it "
                                     f"will not be deleted")

    def check_new(self, overwrite: bool, field: str = "out", hint: str = "pass `overwrite` to replace it",
                  inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> None:
        """Refuse a path that is a file, or a non-empty directory unless `overwrite` and `check_replaceable(inputs)`
        allow it; then check it can be written. Raises ConfigError(`field`)."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(field, f"{self.path} exists and is not a directory")
        if self.is_nonempty():
            if not self.is_recognised() and not overwrite:
                raise ConfigError(field, f"{self.path} exists, is not empty and is not a {self.KIND} directory (no "
                                         f"{self._what_marks_it()}); choose another directory")
            if not overwrite:
                raise ConfigError(field, f"{self.path} exists and is not empty; {hint}")
            self.check_replaceable(inputs, field)
        check_writable(self.path, field)


# --- collect dir ----------------------------------------------------------------------------------------------
class CollectDir(_Dir):
    """What `vrp collect` writes: `videos.jsonl` (one line per video), `skipped.jsonl` (one line per skip, the last
    per id counts), `collect.json` (options and counts of the last run), and while a collector runs its lock file
    (`vrp.locks.LOCK_NAME`). Each JSONL line is
    appended in one write and flushed (`vrp.files.append_jsonl_line`), so a kill leaves at most a torn last line."""

    VIDEOS, SKIPPED, SUMMARY = "videos.jsonl", "skipped.jsonl", "collect.json"

    videos_path, skipped_path = _In(VIDEOS), _In(SKIPPED)

    def exists(self) -> bool:
        """True when the path is a directory holding a `videos.jsonl`."""
        return (self.path / self.VIDEOS).is_file()

    def done_ids(self) -> set[str]:
        """Ids of the collected videos (empty when there is no `videos.jsonl`)."""
        if not self.videos_path.is_file():
            return set()
        return {str(row.get("id")) for _, row in iter_jsonl_rows(self.videos_path) if row is not None and row.get("id")}

    def skipped(self) -> dict[str, dict[str, Any]]:
        """The last `skipped.jsonl` record per video id (empty when there is none)."""
        if not self.skipped_path.is_file():
            return {}
        return {str(r["id"]): r for _, r in iter_jsonl_rows(self.skipped_path) if r is not None and r.get("id")}

    def repair(self) -> None:
        """Cut a torn last line (a kill while appending) off both JSONL files."""
        repair_torn_tail(self.videos_path)
        repair_torn_tail(self.skipped_path)

    def append_video(self, record: dict[str, Any]) -> None:
        append_jsonl_line(self.videos_path, record)

    def append_skipped(self, record: dict[str, Any]) -> None:
        append_jsonl_line(self.skipped_path, record)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.path / self.SUMMARY, summary)


# --- dataset dir ----------------------------------------------------------------------------------------------
class DatasetDir(_Dir):
    """What `vrp prepare` writes: `train.jsonl`, `validation.jsonl` (one `Video` per line) and `manifest.json`."""

    TRAIN, VALIDATION, MANIFEST = "train.jsonl", "validation.jsonl", "manifest.json"
    FILES = (TRAIN, VALIDATION, MANIFEST)
    KIND, MARKERS = "dataset", (MANIFEST, TRAIN, VALIDATION)  # a half-replaced dataset has no manifest yet

    train_path, validation_path = _In(TRAIN), _In(VALIDATION)

    def exists(self) -> bool:
        """True when the path is a directory with a `train.jsonl` or a `validation.jsonl`."""
        return self.train_path.is_file() or self.validation_path.is_file()

    def train_videos(self) -> list[Video]:
        """The training split. Raises ConfigError('data') when the dir has none."""
        if self.path.is_file():
            raise ConfigError("data", f"{self.path} is a file, not a dataset dir; make one with `vrp prepare "
                                      f"{self.path} --out DIR` and train on DIR")
        if not self.train_path.is_file():
            raise ConfigError("data", f"{self.path} has no {self.TRAIN}; run `vrp prepare` first")
        return read_videos(self.train_path)

    def validation_videos(self) -> list[Video]:
        """The validation split ([] when the dir has none)."""
        return read_videos(self.validation_path) if self.validation_path.is_file() else []

    def videos(self, split: str, limit: int = 0) -> Iterator[Video]:
        """The first `limit` videos (0 = all) of `split` (`train` / `validation`), read one line at a time, so that
        memory holds one video. Raises ConfigError('data') as `train_videos` does for a missing training split (a
        missing validation split has no videos), VrpError naming the file and line for a bad one."""
        import itertools

        if split not in ("train", "validation"):
            raise ValueError(f"DatasetDir.videos: split must be 'train' or 'validation', got {split!r}")
        if split == "train":
            if self.path.is_file() or not self.train_path.is_file():
                self.train_videos()  # raises ConfigError('data') saying what is wrong
            path = self.train_path
        elif not self.validation_path.is_file():
            return
        else:
            path = self.validation_path
        yield from itertools.islice(iter_videos(path), limit or None)

    def manifest(self) -> dict[str, Any] | None:
        """`manifest.json` (None when the dir has none: a dataset written by hand may have only its splits). Raises
        VrpError naming the file when it is not a JSON object."""
        path = self.path / self.MANIFEST
        if not path.is_file():
            return None
        return read_json_object(path, "dataset manifest")

    def fingerprint(self) -> str:
        """Hex sha256 over the split files' names and bytes (a missing file counts as empty): the same data gives the
        same value, so a checkpoint can refuse to resume on other data, and a manifest can name its source."""
        h = hashlib.sha256()
        for name in (self.TRAIN, self.VALIDATION):
            h.update(name.encode() + b"\0")
            if (self.path / name).is_file():
                with open(self.path / name, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            h.update(b"\0")
        return h.hexdigest()

    def write(self, train: Iterable[Video], validation: Iterable[Video], manifest: dict[str, Any]) -> None:
        """Write the three files so that the dir never holds a mix of old and new files or a dataset without its
        manifest (`writer`)."""
        with self.writer() as w:
            for v in train:
                w.add(self.TRAIN, v)
            for v in validation:
                w.add(self.VALIDATION, v)
            w.finish(manifest)

    @contextlib.contextmanager
    def writer(self) -> Iterator["DatasetWriter"]:
        """A `DatasetWriter` whose files appear in the dir only when the block ends without an error after its
        `finish`: they are written into a temporary directory (beside a new dir, inside an existing one), which is
        renamed to the dir when it does not exist, else its files are moved into it one by one with
        `manifest.json` last (an old manifest is removed first). An error, a kill or a full disk before that
        leaves the dir as it was and no file that looks complete; the temporary directory is removed (a kill
        leaves it, named `.<dir>.tmp-*`, and no dataset). Raises ConfigError('out') when the dir cannot be
        created, VrpError naming it when a file cannot be written."""
        import tempfile

        out = self.path.absolute()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            # next to a new `out` (renamed into place), inside an existing one (its files are moved out of it)
            stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out if out.is_dir() else out.parent))
        except OSError as e:
            blocker = next((a for a in out.parents if a.exists() and not a.is_dir()), None)
            why = f"{blocker} is a file, not a directory" if blocker else (e.strerror or str(e))
            raise ConfigError("out", f"cannot create {out} ({why})") from None
        writer = None
        try:
            os.chmod(stage, 0o777 & ~current_umask())
            writer = DatasetWriter(stage, out)
            yield writer
            if not writer.finished:
                raise RuntimeError("DatasetDir.writer: the block ended without finish(manifest)")
            try:
                if not out.exists():
                    os.replace(stage, out)
                else:
                    (out / self.MANIFEST).unlink(missing_ok=True)  # a half-replaced dir has no manifest
                    for name in self.FILES:
                        os.replace(stage / name, out / name)
            except OSError as e:
                raise VrpError(f"{out}: cannot write the dataset ({e.strerror or e})") from None
        finally:
            if writer is not None:
                writer.abort()
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)


class DatasetWriter:
    """The files of a dataset being written by `DatasetDir.writer`, in its temporary directory `stage`: `add` a
    video (or its JSON line) to a split file, then `finish(manifest)`. `scratch` is a directory for temporary files
    of the command (removed with the stage, never part of the dataset). Write errors (a full disk) raise VrpError
    naming the dataset dir `out`."""

    def __init__(self, stage: Path, out: Path) -> None:
        self.stage, self.out = stage, out
        self.scratch = stage / ".scratch"
        self.finished = False
        self.counts = {DatasetDir.TRAIN: 0, DatasetDir.VALIDATION: 0}
        self._files: dict[str, Any] = {}
        with self._errors():
            self.scratch.mkdir()
            for name in self.counts:
                self._files[name] = open(stage / name, "wb")
                os.chmod(stage / name, 0o666 & ~current_umask())

    def add(self, split: str, video: Video) -> None:
        """Append `video` to the split file `split` (`DatasetDir.TRAIN` or `DatasetDir.VALIDATION`)."""
        self.add_line(split, (json.dumps(video.to_json(), ensure_ascii=False) + "\n").encode("utf-8"))

    def add_line(self, split: str, line: bytes) -> None:
        """Append one video's JSON line (UTF-8, ending in a newline, as `add` writes it) to the split file."""
        with self._errors():
            self._files[split].write(line)
        self.counts[split] += 1

    def finish(self, manifest: dict[str, Any]) -> None:
        """Flush the split files to disk, delete `scratch`, and write `manifest.json` (last)."""
        with self._errors():
            for f in self._files.values():
                f.flush()
                os.fsync(f.fileno())
                f.close()
            shutil.rmtree(self.scratch)
        write_json_atomic(self.stage / DatasetDir.MANIFEST, manifest)
        self.finished = True

    def abort(self) -> None:
        """Close the split files without checking them (the stage is deleted next)."""
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise VrpError(f"{self.out}: cannot write the dataset ({e.strerror or e})") from None


# --- report dir -----------------------------------------------------------------------------------------------
class ReportDir(_Dir):
    """What `vrp evaluate` writes: `report.md`, `metrics.json` (whose `files` lists every file of the report),
    `per_video.jsonl`, `generations.jsonl` and PNG charts."""

    REPORT, METRICS, PER_VIDEO, GENERATIONS = "report.md", "metrics.json", "per_video.jsonl", "generations.jsonl"
    OWN_FILES = (REPORT, METRICS, PER_VIDEO, GENERATIONS)
    KIND, MARKERS = "report", (REPORT, METRICS)

    def is_recognised(self) -> bool:
        """True when the dir holds a `report.md`, or a `metrics.json` listing its `files` (a run's metrics.json,
        which has no such list, does not count)."""
        if (self.path / self.REPORT).is_file():
            return True
        try:
            return "files" in json.loads((self.path / self.METRICS).read_text())
        except (OSError, ValueError, TypeError):
            return False

    def _what_marks_it(self) -> str:
        return f"{self.REPORT} or a report's {self.METRICS}"

    def check_new(self, overwrite: bool, field: str = "out",
                  hint: str = "pass `overwrite` to replace the report in it",
                  inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> None:
        super().check_new(overwrite, field, hint, inputs)

    def remove_previous(self) -> None:
        """Delete the files a previous report listed in its metrics.json (only those, never anything else)."""
        try:
            old = json.loads((self.path / self.METRICS).read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):
            return
        for name in old:
            p = self.path / str(name)
            if p.parent == self.path and p.is_file() and (p.suffix == ".png" or p.name in self.OWN_FILES):
                p.unlink()
