"""`vrp prepare` (`vrp.prepare.run`): the split without leakage, its determinism, the dataset dir it writes (files
and permissions, a manifest), re-preparing a prepared dir, and no clobbered or half-written output. Reading the
sources is tests/test_sources.py."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from helpers import one_line_error, prepared_dataset, write_csv_table, write_seed_xlsx

from vrp.cli import main
from vrp.errors import ConfigError, VrpError
from vrp.prepare.run import prepare, split_videos
from vrp.records import Comment, Video, read_videos


def test_seed_grouping_and_split_without_leakage(tmp_path: Path) -> None:
    comments = write_seed_xlsx(tmp_path / "seed.xlsx", 10)
    m = prepare(tmp_path / "seed.xlsx", tmp_path / "ds", val_fraction=0.2, seed=3)
    assert m["videos"] == {"train": 8, "validation": 2, "total": 10}
    assert m["comments"] == {"train": 24, "validation": 6}
    train, val = read_videos(tmp_path / "ds/train.jsonl"), read_videos(tmp_path / "ds/validation.jsonl")
    assert not {v.video_id for v in train} & {v.video_id for v in val}
    got = sorted([c.text for c in v.comments] for v in train + val)
    assert got == sorted(comments)
    for v in train + val:
        assert [c.rank for c in v.comments] == [1, 2, 3]
        assert v.transcript.startswith("video ") and "[INST]" not in v.transcript
    # the longest (least truncated) prompt becomes the transcript
    assert all(v.transcript.endswith("_79") for v in train + val)
    man = json.loads((tmp_path / "ds/manifest.json").read_text())
    assert len(man["source_sha256"]) == 64


def test_split_is_deterministic_and_seed_dependent() -> None:
    vids = [Video(f"v{i}", "", "t", [Comment("c")]) for i in range(50)]
    a = [v.video_id for v in split_videos(vids, 0.1, 0)[1]]
    b = [v.video_id for v in split_videos(vids, 0.1, 0)[1]]
    c = [v.video_id for v in split_videos(vids, 0.1, 1)[1]]
    assert a == b and len(a) == 5 and a != c


def test_prepare_refuses_to_clobber_and_leaves_no_partial_output(tmp_path: Path) -> None:
    write_seed_xlsx(tmp_path / "seed.xlsx", 4)
    out = tmp_path / "ds"
    prepare(tmp_path / "seed.xlsx", out)
    before = (out / "train.jsonl").read_text()
    with pytest.raises(ConfigError, match="out: .* exists and is not empty; pass `overwrite` to replace it"):
        prepare(tmp_path / "seed.xlsx", out)
    (tmp_path / "bad.csv").write_text("title,comment\nx,y\n")
    missing = r"bad\.csv: missing column\(s\) \['transcript'\]"
    with pytest.raises(VrpError, match=missing):
        prepare(tmp_path / "bad.csv", out, overwrite=True)
    assert (out / "train.jsonl").read_text() == before
    fresh = tmp_path / "fresh"
    with pytest.raises(VrpError, match=missing):
        prepare(tmp_path / "bad.csv", fresh)
    assert not fresh.exists()


def test_prepare_out_that_is_a_file(tmp_path, capsys) -> None:
    src = write_csv_table(tmp_path / "t.csv", title=["a"], transcript=["x"], comment=["c"])
    (tmp_path / "f.txt").write_text("keep me")
    for flags in ([], ["--overwrite"]):
        one_line_error(capsys, ["prepare", str(src), "--out", str(tmp_path / "f.txt"), *flags], "f.txt")
    one_line_error(capsys, ["prepare", str(src), "--out", str(tmp_path / "f.txt" / "sub")], "is a file")
    assert (tmp_path / "f.txt").read_text() == "keep me"


def test_prepare_from_a_prepared_dataset_dir(tmp_path, capsys) -> None:
    ds = prepared_dataset(tmp_path)
    assert main(["prepare", str(ds), "--out", str(tmp_path / "again"), "--val-fraction", "0.5"]) == 0
    m = json.loads((tmp_path / "again/manifest.json").read_text())
    assert m["format"] == "prepared dataset dir" and m["videos"]["total"] == 2 and len(m["source_sha256"]) == 64


def test_prepared_files_are_not_private_temp_files(tmp_path) -> None:
    prepared_dataset(tmp_path)
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("train.jsonl", "validation.jsonl", "manifest.json"):
        mode = stat.S_IMODE((tmp_path / "ds" / name).stat().st_mode)
        assert mode == 0o666 & ~mask, (name, oct(mode))
    assert stat.S_IMODE((tmp_path / "ds").stat().st_mode) == 0o777 & ~mask


def test_prepare_failing_midway_leaves_no_partial_dataset(tmp_path, monkeypatch) -> None:
    import vrp.artifacts
    import vrp.prepare.run

    src = write_csv_table(tmp_path / "t.csv", title=["a", "b"], transcript=["x", "y"], comment=["c", "d"])

    def boom(*a, **k):
        raise KeyboardInterrupt("killed while writing the manifest")

    monkeypatch.setattr(vrp.artifacts, "write_json_atomic", boom)  # the manifest is written last
    with pytest.raises(KeyboardInterrupt, match="^killed while writing the manifest$"):
        vrp.prepare.run.prepare(src, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


# --- streaming: chunks, far-apart rows, interrupted writes -----------------------------------------------------
def _table_rows(n_videos: int = 12) -> list[dict[str, str]]:
    """Rows of `n_videos` videos, adjacent per video; video i has 1 + i % 4 comments with like counts."""
    return [{"video_id": f"v{i}", "title": f"title {i}", "transcript": f"transcript of video {i}. " * 3,
             "comment": f"comment {j} of video {i}", "like_count": str((i * 7 + j * 3) % 10)}
            for i in range(n_videos) for j in range(1 + i % 4)]


def _interleaved(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The same rows round-robin over the videos (first the first row of every video, then every second row, ...):
    the rows of one video far apart, the videos' first rows and each video's rows still in their order."""
    by: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault(r["video_id"], []).append(r)
    return [g[k] for k in range(max(map(len, by.values()))) for g in by.values() if k < len(g)]


def _write(rows: list[dict[str, str]], path: Path) -> Path:
    import pandas as pd

    df = pd.DataFrame(rows, dtype=str)
    {".jsonl": lambda: path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"),
     ".csv": lambda: df.to_csv(path, index=False), ".parquet": lambda: df.to_parquet(path)}[path.suffix]()
    return path


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_prepare_in_chunks_of_far_apart_rows_writes_the_same_files(tmp_path: Path, ext: str) -> None:
    from vrp.prepare.run import validation_indices

    adjacent = _write(_table_rows(), tmp_path / f"adjacent{ext}")
    far = _write(_interleaved(_table_rows()), tmp_path / f"far{ext}")
    assert far.read_bytes() != adjacent.read_bytes()
    files = []
    for src, chunk_rows in ((adjacent, 10 ** 6), (adjacent, 1), (far, 1), (far, 5)):
        out = tmp_path / f"ds-{src.stem}-{chunk_rows}"
        prepare(src, out, val_fraction=0.25, seed=1, chunk_rows=chunk_rows)
        files.append(((out / "train.jsonl").read_bytes(), (out / "validation.jsonl").read_bytes()))
    assert files[1:] == [files[0]] * 3
    out = tmp_path / "ds-far-5"
    train, val = read_videos(out / "train.jsonl"), read_videos(out / "validation.jsonl")
    val_idx = validation_indices(12, 0.25, 1)  # the split of the videos in source order, as split_videos draws it
    assert [v.video_id for v in train] == [f"v{i}" for i in range(12) if i not in val_idx]
    assert [v.video_id for v in val] == [f"v{i}" for i in sorted(val_idx)]
    v7 = next(v for v in train + val if v.video_id == "v7")  # 4 comments, likes 9, 2, 5, 8: ranked by likes
    assert [(c.text, c.like_count, c.rank) for c in v7.comments] == [
        ("comment 0 of video 7", 9, 1), ("comment 3 of video 7", 8, 2), ("comment 2 of video 7", 5, 3),
        ("comment 1 of video 7", 2, 4)]
    m = json.loads((out / "manifest.json").read_text())
    assert m["comments"] == {"train": sum(len(v.comments) for v in train),
                             "validation": sum(len(v.comments) for v in val)}


def test_split_videos_and_the_streamed_split_agree() -> None:
    from vrp.prepare.run import validation_indices

    vids = [Video(f"v{i}", "", "t", [Comment("c")]) for i in range(37)]
    _, val = split_videos(vids, 0.2, 5)
    assert [v.video_id for v in val] == [f"v{i}" for i in sorted(validation_indices(37, 0.2, 5))]
    assert len(validation_indices(2, 0.01, 0)) == 1 and validation_indices(1, 0.5, 0) == set()


def _full_disk_after(monkeypatch: pytest.MonkeyPatch, lines: int) -> None:
    """Make the dataset writer fail like a full disk after `lines` video lines."""
    import errno

    from vrp.artifacts import DatasetWriter

    real, written = DatasetWriter.add_line, []

    def add_line(self: DatasetWriter, split: str, line: bytes) -> None:
        if len(written) >= lines:
            with self._errors():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(line)
        real(self, split, line)

    monkeypatch.setattr(DatasetWriter, "add_line", add_line)


def test_a_disk_full_while_writing_leaves_no_dataset_that_looks_complete(tmp_path: Path, monkeypatch) -> None:
    src = _write(_table_rows(), tmp_path / "t.jsonl")
    old = tmp_path / "old"
    prepare(src, old, val_fraction=0.5)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    _full_disk_after(monkeypatch, 5)
    for out, overwrite in ((tmp_path / "fresh", False), (old, True)):
        with pytest.raises(VrpError, match=rf"{out.name}: cannot write the dataset \(No space left on device\)"):
            prepare(src, out, overwrite=overwrite, chunk_rows=2)
    assert not (tmp_path / "fresh").exists()
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before  # the old dataset, no temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "t.jsonl"]


def test_a_kill_while_reading_the_source_leaves_no_dataset(tmp_path: Path, monkeypatch) -> None:
    import vrp.prepare.run
    from vrp.sources import iter_source

    src = _write(_table_rows(), tmp_path / "t.jsonl")

    def killed_after_three(*args, **kwargs):
        for i, v in enumerate(iter_source(*args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt("killed while reading")
            yield v

    monkeypatch.setattr(vrp.prepare.run, "iter_source", killed_after_three)
    with pytest.raises(KeyboardInterrupt, match="^killed while reading$"):
        prepare(src, tmp_path / "ds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]
