"""`vrp prepare`: a source (a table, the seed spreadsheet or a collect dir, read by `vrp.sources`) to a dataset dir:
videos split by video into train and validation, written with a manifest (`vrp.artifacts.DatasetDir`, its owner).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from vrp.artifacts import CollectDir, DatasetDir
from vrp.errors import ConfigError, VrpError
from vrp.files import sha256_file
from vrp.prepare.config import PrepareConfig
from vrp.records import Video
from vrp.sources import load_source
from vrp.tables import TABLE_EXTS, read_jsonl_table  # noqa: F401  (read_jsonl_table: part of this module's API)


def split_videos(videos: list[Video], val_fraction: float, seed: int) -> tuple[list[Video], list[Video]]:
    """Split by video (never one video in both): shuffle with `random.Random(seed)`, the first
    round(n * val_fraction) (at least 1 when val_fraction > 0 and n >= 2) go to validation."""
    if not 0 <= val_fraction < 1:
        raise ConfigError("val_fraction", f"must be in [0, 1), got {val_fraction}")
    order = list(range(len(videos)))
    random.Random(seed).shuffle(order)
    n_val = round(len(videos) * val_fraction)
    if val_fraction > 0 and len(videos) >= 2:
        n_val = max(1, min(n_val, len(videos) - 1))
    val_idx = set(order[:n_val])
    return ([v for i, v in enumerate(videos) if i not in val_idx], [v for i, v in enumerate(videos) if i in val_idx])


def _source_sha256(source: Path) -> str:
    """sha256 of a source file, of a collect dir's videos.jsonl, or a dataset dir's fingerprint."""
    if source.is_file():
        return sha256_file(source)
    if CollectDir(source).exists():
        return sha256_file(CollectDir(source).videos_path)
    return DatasetDir(source).fingerprint()


def prepare(source: str | Path, out: str | Path, config: PrepareConfig | None = None, overwrite: bool = False,
            **options: Any) -> dict[str, Any]:
    """Import `source`, split by video (`config`, or `PrepareConfig(**options)`) and write the dataset dir `out`
    (`train.jsonl`, `validation.jsonl`, `manifest.json`; see `vrp.artifacts.DatasetDir.write`).

    Returns the manifest. Refuses a non-empty `out` unless `overwrite`, an `out` that is a file, and an `out` that
    another command is writing (ConfigError 'out', `vrp.locks`). The files appear together; a failure leaves `out`
    as it was.
    """
    config = config or PrepareConfig(**options)  # checked before the source is read
    source, dataset = Path(source), DatasetDir(out)
    with dataset.lock("vrp prepare"):  # one writer per dir (`vrp.locks`)
        return _prepare(source, dataset, config, overwrite)


def _prepare(source: Path, dataset: DatasetDir, config: PrepareConfig, overwrite: bool) -> dict[str, Any]:
    dataset.check_new(overwrite)
    videos, stats = load_source(source)
    seen: set[str] = set()
    for v in videos:
        if v.video_id in seen:
            raise VrpError(f"{source}: duplicate video_id {v.video_id!r}")
        seen.add(v.video_id)
    train, val = split_videos(videos, config.val_fraction, config.seed)
    manifest = {
        "source": str(source.resolve()),
        "source_sha256": _source_sha256(source),
        "format": stats.pop("format"),
        "val_fraction": config.val_fraction, "seed": config.seed,
        "videos": {"train": len(train), "validation": len(val), "total": len(videos)},
        "comments": {"train": sum(len(v.comments) for v in train), "validation": sum(len(v.comments) for v in val)},
        "stats": stats,
    }
    dataset.write(train, val, manifest)
    return manifest
