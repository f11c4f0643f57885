"""Import, grouping and split of the supported sources (seed xlsx, user tables) and bad-input errors."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import write_seed_xlsx

from vrp.errors import ConfigError, VrpError
from vrp.prepare.run import prepare, split_videos
from vrp.records import Comment, Video, read_videos
from vrp.sources import load_source


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


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet", ".xlsx"])
def test_user_table_groups_by_video_and_ranks_by_likes(tmp_path: Path, ext: str) -> None:
    df = pd.DataFrame({"video_id": ["a", "a", "b", "a"], "title": ["A", "A", "B", "A"],
                       "transcript": ["ta", "ta", "tb", "ta"], "comment": ["low", "high", "only", "mid"],
                       "like_count": [1, 100, 5, 10]})
    path = tmp_path / f"t{ext}"
    {".csv": lambda: df.to_csv(path, index=False), ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
     ".parquet": lambda: df.to_parquet(path), ".xlsx": lambda: df.to_excel(path, index=False)}[ext]()
    videos, stats = load_source(path)
    by = {v.video_id: v for v in videos}
    assert [c.text for c in by["a"].comments] == ["high", "mid", "low"]
    assert [c.like_count for c in by["a"].comments] == [100, 10, 1]
    assert [c.rank for c in by["a"].comments] == [1, 2, 3]
    assert by["b"].title == "B" and by["b"].transcript == "tb"


def test_test_xlsx_without_comments(tmp_path: Path) -> None:
    pd.DataFrame({"text": [f"<s>[INST] title {i} transcript words [/INST] " for i in range(3)],
                  "length": [10, 10, 10]}).to_excel(tmp_path / "test.xlsx")
    videos, _ = load_source(tmp_path / "test.xlsx", require_comments=False)
    assert len(videos) == 3 and all(not v.comments for v in videos)
    with pytest.raises(VrpError, match="no usable videos"):
        load_source(tmp_path / "test.xlsx", require_comments=True)


def test_bad_inputs_name_file_and_row(tmp_path: Path) -> None:
    with pytest.raises(VrpError, match="file not found"):
        load_source(tmp_path / "missing.csv")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(VrpError, match="unknown extension"):
        load_source(tmp_path / "x.txt")
    pd.DataFrame({"title": ["t"], "comment": ["c"]}).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(VrpError, match=r"nocol.csv: missing column\(s\) \['transcript'\]"):
        load_source(tmp_path / "nocol.csv")
    pd.DataFrame({"title": ["t", "t"], "transcript": ["x", None], "comment": ["c", "d"]}).to_csv(
        tmp_path / "nan.csv", index=False)
    with pytest.raises(VrpError, match=r"nan.csv: row 3: empty or missing 'transcript'"):
        load_source(tmp_path / "nan.csv")
    pd.DataFrame({"comments": ["c"], "titles": ["p"], "text": ["<s> no marker </s>"], "length": [1]}).to_excel(
        tmp_path / "noinst.xlsx", index=False)
    with pytest.raises(VrpError, match=r"noinst.xlsx: row 2: .*\[/INST\]"):
        load_source(tmp_path / "noinst.xlsx")
    pd.DataFrame({"title": [], "transcript": [], "comment": []}).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(VrpError, match="no rows"):
        load_source(tmp_path / "empty.csv")


def test_video_with_zero_usable_comments_is_skipped_and_counted(tmp_path: Path) -> None:
    pd.DataFrame({"title": ["a", "b", "b"], "transcript": ["ta", "tb", "tb"], "comment": [" ", "x", None]}).to_csv(
        tmp_path / "t.csv", index=False)
    with pytest.warns(UserWarning, match="skipped 1 video"):
        videos, stats = load_source(tmp_path / "t.csv")
    assert [v.title for v in videos] == ["b"]
    assert stats["videos_skipped_no_comments"] == 1 and stats["comments_skipped_empty"] == 2


def test_prepare_refuses_to_clobber_and_leaves_no_partial_output(tmp_path: Path) -> None:
    write_seed_xlsx(tmp_path / "seed.xlsx", 4)
    out = tmp_path / "ds"
    prepare(tmp_path / "seed.xlsx", out)
    before = (out / "train.jsonl").read_text()
    with pytest.raises(ConfigError, match="out: .* exists and is not empty; pass `overwrite` to replace it"):
        prepare(tmp_path / "seed.xlsx", out)
    (tmp_path / "bad.csv").write_text("title,comment\nx,y\n")
    with pytest.raises(VrpError):
        prepare(tmp_path / "bad.csv", out, overwrite=True)
    assert (out / "train.jsonl").read_text() == before
    fresh = tmp_path / "fresh"
    with pytest.raises(VrpError):
        prepare(tmp_path / "bad.csv", fresh)
    assert not fresh.exists() or not any(fresh.iterdir())


@pytest.mark.parametrize("kind", ["table", "videos", "collect"])
def test_deeply_nested_json_in_any_jsonl_source_is_one_line_error(tmp_path, kind):
    deep = "[" * 100_000 + "]" * 100_000
    line = {"table": '{"title": "t", "transcript": "x", "comment": %s}',
            "videos": '{"video_id": "v", "transcript": "x", "comments": %s}',
            "collect": '{"id": "AAAAAAAAAAA", "transcript": %s, "comments": []}'}[kind] % deep
    path = tmp_path / ("c" if kind == "collect" else "in.jsonl")
    if kind == "collect":
        path.mkdir()
        (path / "videos.jsonl").write_text('{"id": "BBBBBBBBBBB", "transcript": "ok", "comments": []}\n'
                                           + line + "\n")
        want = r"videos\.jsonl:2: invalid JSON \(nested too deeply to read\)"
    else:
        path.write_text(line + "\n")
        want = r"in\.jsonl:1: invalid JSON \(nested too deeply to read\)"
    with pytest.raises(VrpError, match=want):
        load_source(path)
