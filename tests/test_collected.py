"""Reading a collect dir into `Video` records (`vrp.collected`), and the append/repair of its JSON Lines files."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from helpers import one_line_error

from vrp.artifacts import CollectDir
from vrp.collected import clean_comments, load_collect_dir
from vrp.errors import VrpError
from vrp.files import append_jsonl_line, repair_torn_tail
from vrp.records import Comment

FIX = Path(__file__).parent / "fixtures" / "collect" / "collect_dir"


def _write(path: Path, rows: list) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "videos.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def test_load_fixture_collect_dir_ranks_by_likes_and_drops_unusable(caplog):
    caplog.set_level(logging.WARNING, logger="vrp.collected")
    videos, stats = load_collect_dir(FIX)
    assert [v.video_id for v in videos] == ["AAAAAAAAAAA"]
    v = videos[0]
    assert v.title == "Rolling captions explained"
    assert v.transcript == "good morning everyone welcome back"
    assert v.comments == [
        Comment("best video on this topic", 340, 1),
        Comment("great explanation\n\nthanks", 12, 2),
        Comment("same likes as Ugw2, listed later", 12, 3),
    ]
    assert stats["videos_read"] == 3 and stats["videos_kept"] == 1 and stats["videos_dropped"] == 2
    assert stats["videos_dropped_no_transcript"] == 1
    assert stats["videos_dropped_no_usable_comments"] == 1
    assert stats["videos_dropped_duplicate_video_id"] == 0
    assert stats["comments_read"] == 11 and stats["comments_kept"] == 3
    assert {k: v for k, v in stats.items() if k.startswith("comments_dropped_") and v} == {
        "comments_dropped_duplicate_id": 1, "comments_dropped_by_uploader": 2, "comments_dropped_link_only": 1,
        "comments_dropped_timestamps_only": 1, "comments_dropped_empty": 1, "comments_dropped_reply": 1,
        "comments_dropped_in_dropped_video": 1}
    assert stats["comments_read"] == stats["comments_kept"] + stats["comments_dropped"]
    assert stats["skipped_at_collection_private"] == 1 and stats["skipped_at_collection_rate_limited"] == 1
    assert stats["torn_last_line"] == 0
    assert "dropped 2 of 3 videos (no_transcript: 1, no_usable_comments: 1)" in caplog.text
    assert CollectDir(FIX).exists() and not CollectDir(FIX.parent).exists()


def test_options_keep_uploader_and_annotations_and_cap_comments():
    videos, stats = load_collect_dir(FIX / "videos.jsonl", drop_uploader_comments=False, drop_annotations=False,
                                     max_comments=2)
    assert [v.video_id for v in videos] == ["AAAAAAAAAAA", "BBBBBBBBBBB", "CCCCCCCCCCC"]
    assert videos[0].transcript == "[Music] good morning everyone welcome back"
    assert [(c.text, c.rank) for c in videos[0].comments] == [("Pinned: see my other video", 1),
                                                              ("best video on this topic", 2)]
    assert stats["comments_dropped_over_max_comments"] == 2


def test_display_text_like_counts_and_truncation(tmp_path):
    comments, dropped = clean_comments([
        {"id": "a", "text": "\U0001F468\u200d\U0001F4BB great video\ufeff", "like_count": "1.2K likes"},
        {"id": "b", "text": "second", "like_count": "Like"},
        {"id": "c", "text": "third", "like_count": "2,3M"},
    ], "x", max_comment_graphemes=2)
    assert [(c.text, c.like_count, c.rank) for c in comments] == [
        ("th", 2_300_000, 1), ("\U0001F468\u200d\U0001F4BB", 1200, 2), ("se", None, 3)]
    assert sum(dropped.values()) == 0


def test_torn_last_line_is_ignored_and_counted(tmp_path):
    d = _write(tmp_path / "c", [json.loads((FIX / "videos.jsonl").read_text().splitlines()[0])])
    with open(d / "videos.jsonl", "a") as f:
        f.write('{"id": "ZZZZZZZZZZZ", "title": "cut he')
    videos, stats = load_collect_dir(d)
    assert len(videos) == 1 and stats["torn_last_line"] == 1 and stats["videos_read"] == 1


@pytest.mark.parametrize("line, message", [
    ("{not json", ":1: invalid JSON"),
    ('["a list"]', ":1: expected a JSON object, got list"),
    ('{"title": "no id", "transcript": []}', ":1: field 'id' is missing or not a string"),
    ('{"id": "AAAAAAAAAAA", "comments": []}', ":1: field 'transcript' is missing"),
    ('{"id": "AAAAAAAAAAA", "transcript": 5}', ":1: field 'transcript' must be a list"),
    ('{"id": "AAAAAAAAAAA", "transcript": [{"start": 0}]}', ":1: transcript[0]: expected a segment object"),
    ('{"id": "AAAAAAAAAAA", "transcript": [], "comments": {"a": 1}}', ":1: field 'comments' must be a list"),
    ('{"id": "AAAAAAAAAAA", "transcript": [], "comments": [{"like_count": 3}]}',
     ":1: comments[0] must be an object with a string 'text'"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, line, message):
    d = _write(tmp_path / "c", [line, json.dumps({"id": "BBBBBBBBBBB", "transcript": "x", "comments": []})])
    with pytest.raises(VrpError, match=re.escape(f"{d / 'videos.jsonl'}{message}")):
        load_collect_dir(d)


def test_missing_collect_dir_file(tmp_path):
    with pytest.raises(VrpError, match="videos.jsonl: file not found"):
        load_collect_dir(tmp_path)


def test_append_and_repair_torn_tail(tmp_path):
    d = CollectDir(tmp_path)
    p = d.videos_path
    append_jsonl_line(p, {"id": "AAAAAAAAAAA", "text": "é"})
    append_jsonl_line(p, {"id": "BBBBBBBBBBB"})
    assert p.read_text(encoding="utf-8") == '{"id": "AAAAAAAAAAA", "text": "é"}\n{"id": "BBBBBBBBBBB"}\n'
    assert repair_torn_tail(p) is False
    with open(p, "ab") as f:
        f.write(b'{"id": "CCCCCCCCCCC", "tex')
    assert repair_torn_tail(p) is True
    assert d.done_ids() == {"AAAAAAAAAAA", "BBBBBBBBBBB"}
    assert p.read_bytes().endswith(b'{"id": "BBBBBBBBBBB"}\n')
    with open(p, "ab") as f:  # killed right before the newline: the record is complete and kept
        f.write(b'{"id": "DDDDDDDDDDD"}')
    assert repair_torn_tail(p) is True
    assert d.done_ids() == {"AAAAAAAAAAA", "BBBBBBBBBBB", "DDDDDDDDDDD"}
    one = tmp_path / "one.jsonl"
    one.write_bytes(b'{"id": "torn')
    assert repair_torn_tail(one) is True and one.read_bytes() == b""


def test_read_skipped_keeps_the_last_record_per_id(tmp_path):
    d = tmp_path / "c"
    shutil.copytree(FIX, d)
    append_jsonl_line(d / "skipped.jsonl", {"id": "EEEEEEEEEEE", "reason": "private", "permanent": True})
    skipped = CollectDir(d).skipped()
    assert skipped["EEEEEEEEEEE"]["reason"] == "private" and skipped["DDDDDDDDDDD"]["permanent"] is True
    assert CollectDir(tmp_path / "none").skipped() == {}


def test_missing_or_garbage_like_count_is_unknown_not_zero():
    comments, _ = clean_comments([
        {"id": "a", "text": "no count", "like_count": None},
        {"id": "b", "text": "garbage", "like_count": "abc"},
        {"id": "c", "text": "zero", "like_count": 0},
        {"id": "d", "text": "huge", "like_count": "1e400"},
        {"id": "e", "text": "missing"},
    ], "x")
    assert [(c.text, c.like_count, c.rank) for c in comments] == [
        ("zero", 0, 1), ("no count", None, 2), ("garbage", None, 3), ("huge", None, 4), ("missing", None, 5)]


def test_collect_dir_non_utf8_line(tmp_path, capsys) -> None:
    d = tmp_path / "collect"
    d.mkdir()
    (d / "videos.jsonl").write_bytes(b'{"id": "a", "transcript": "caf\xe9", "comments": []}\n')
    one_line_error(capsys, ["prepare", str(d), "--out", str(tmp_path / "o")], "videos.jsonl:1", "UTF-8")
