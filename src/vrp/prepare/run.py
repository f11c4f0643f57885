"""`vrp prepare`: a source (a table, the seed spreadsheet or a collect dir, read by `vrp.sources`) to a dataset dir:
videos split by video into train and validation, written with a manifest (`vrp.artifacts.DatasetDir`, its owner).

Streams: the source's videos are read one at a time (`vrp.sources.iter_source`: tables in chunks, rows grouped on
disk) into a spool file beside the dataset, the split is drawn from their count alone (`validation_indices`, the
same shuffle as `split_videos`), and the spooled lines are copied to the split files; memory grows only by a video
index and a comment count per video (`_prepare`), so time and memory are linear in the rows and the videos.
"""
from __future__ import annotations

import contextlib
import json
import random
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vrp.artifacts import CollectDir, DatasetDir
from vrp.errors import ConfigError, VrpError
from vrp.files import sha256_file
from vrp.prepare.config import PrepareConfig
from vrp.records import Video
from vrp.sources import iter_source
from vrp.table_chunks import CHUNK_ROWS
from vrp.tables import TABLE_EXTS, read_jsonl_table  # noqa: F401  (read_jsonl_table: part of this module's API)


def split_videos(videos: list[Video], val_fraction: float, seed: int) -> tuple[list[Video], list[Video]]:
    """Split by video (never one video in both): the videos whose indices `validation_indices` picks go to
    validation, the others to train, each in their order."""
    val_idx = validation_indices(len(videos), val_fraction, seed)
    return ([v for i, v in enumerate(videos) if i not in val_idx], [v for i, v in enumerate(videos) if i in val_idx])


def validation_indices(n: int, val_fraction: float, seed: int) -> set[int]:
    """The indices (0..n-1, in source order) of the validation videos among `n`: shuffle the indices with
    `random.Random(seed)`; the first round(n * val_fraction) (at least 1 when val_fraction > 0 and n >= 2, at most
    n - 1) go to validation. Needs only the count, so the videos can be streamed (memory: n indices)."""
    if not 0 <= val_fraction < 1:
        raise ConfigError("val_fraction", f"must be in [0, 1), got {val_fraction}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = max(1, min(n_val, n - 1))
    return set(order[:n_val])


@contextlib.contextmanager
def _spool(path: Path, dataset: DatasetDir) -> Iterator[Callable[[bytes], None]]:
    """A function appending bytes to the spool file `path`; OSError (a full disk) while opening, writing or closing
    it is a VrpError naming the dataset dir."""
    try:
        f = open(path, "wb")
    except OSError as e:
        raise VrpError(f"{dataset.path}: cannot write the dataset ({e.strerror or e})") from None

    def put(data: bytes) -> None:
        try:
            f.write(data)
        except OSError as e:
            raise VrpError(f"{dataset.path}: cannot write the dataset ({e.strerror or e})") from None

    try:
        yield put
    finally:
        try:
            f.close()
        except OSError as e:
            raise VrpError(f"{dataset.path}: cannot write the dataset ({e.strerror or e})") from None


def _source_sha256(source: Path) -> str:
    """sha256 of a source file, of a collect dir's videos.jsonl, or a dataset dir's fingerprint."""
    if source.is_file():
        return sha256_file(source)
    if CollectDir(source).exists():
        return sha256_file(CollectDir(source).videos_path)
    return DatasetDir(source).fingerprint()


def prepare(source: str | Path, out: str | Path, config: PrepareConfig | None = None, overwrite: bool = False,
            chunk_rows: int = CHUNK_ROWS, **options: Any) -> dict[str, Any]:
    """Import `source`, split by video (`config`, or `PrepareConfig(**options)`) and write the dataset dir `out`
    (`train.jsonl`, `validation.jsonl`, `manifest.json`; see `vrp.artifacts.DatasetDir.writer`). A table is read
    `chunk_rows` rows at a time (the files do not depend on it).

    Returns the manifest. Refuses a non-empty `out` unless `overwrite`, an `out` that is a file, and an `out` that
    another command is writing (ConfigError 'out', `vrp.locks`). The files appear together; a failure (a full disk
    included) leaves `out` as it was.
    """
    config = config or PrepareConfig(**options)  # checked before the source is read
    source, dataset = Path(source), DatasetDir(out)
    with dataset.lock("vrp prepare"):  # one writer per dir (`vrp.locks`)
        return _prepare(source, dataset, config, overwrite, chunk_rows)


def _prepare(source: Path, dataset: DatasetDir, config: PrepareConfig, overwrite: bool,
             chunk_rows: int = CHUNK_ROWS) -> dict[str, Any]:
    """Stream the source's videos into a spool file (one JSON line each, their comment counts and ids kept), pick
    the validation indices from the count, then copy each spooled line to its split file (`DatasetDir.writer`:
    nothing appears in `out` before the manifest is written). Memory: a chunk of rows, one video, and per video its
    id and comment count; disk: the grouping database of a table and the spool, beside the dataset while it is
    written."""
    dataset.check_new(overwrite)
    stats: Counter = Counter()
    with dataset.writer() as w:
        counts = array("L")  # comments per video, in source order
        videos = iter_source(source, stats=stats, scratch=w.scratch, chunk_rows=chunk_rows)
        with _spool(w.scratch / "videos.jsonl", dataset) as put, contextlib.closing(videos):
            seen: set[str] = set()
            for v in videos:
                if v.video_id in seen:
                    raise VrpError(f"{source}: duplicate video_id {v.video_id!r}")
                seen.add(v.video_id)
                put((json.dumps(v.to_json(), ensure_ascii=False) + "\n").encode("utf-8"))
                counts.append(len(v.comments))
            del seen
        val_idx = validation_indices(len(counts), config.val_fraction, config.seed)
        comments = {DatasetDir.TRAIN: 0, DatasetDir.VALIDATION: 0}
        with open(w.scratch / "videos.jsonl", "rb") as spool:
            for i, line in enumerate(spool):
                split = DatasetDir.VALIDATION if i in val_idx else DatasetDir.TRAIN
                w.add_line(split, line)
                comments[split] += counts[i]
        stats_out = {k: v for k, v in stats.items() if k != "format"}
        n_train, n_val = w.counts[DatasetDir.TRAIN], w.counts[DatasetDir.VALIDATION]
        manifest = {
            "source": str(source.resolve()),
            "source_sha256": _source_sha256(source),
            "format": stats["format"],
            "val_fraction": config.val_fraction, "seed": config.seed,
            "videos": {"train": n_train, "validation": n_val, "total": n_train + n_val},
            "comments": {"train": comments[DatasetDir.TRAIN], "validation": comments[DatasetDir.VALIDATION]},
            "stats": stats_out,
        }
        w.finish(manifest)
    return manifest
