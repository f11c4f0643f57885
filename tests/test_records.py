"""Video and comment records (`vrp.records`) read from JSON: wrong field types and unpaired surrogates are errors
naming the file, line and field, in every reader and command that takes them."""
from __future__ import annotations

import json

import pytest
from helpers import one_line_error

from vrp.errors import VrpError


@pytest.mark.parametrize("record, field", [
    ({"video_id": None, "transcript": "x", "comments": [{"text": "c"}]}, "video_id"),
    ({"video_id": "a", "transcript": None, "comments": [{"text": "c"}]}, "transcript"),
    ({"video_id": "a", "transcript": ["x"], "comments": [{"text": "c"}]}, "transcript"),
    ({"video_id": "a", "transcript": "x", "comments": "abc"}, "comments"),
    ({"video_id": "a", "transcript": "x", "comments": [{"text": None}]}, "comments[0].text"),
    ({"video_id": "a", "transcript": "x", "comments": [{"text": "c", "like_count": "many"}]},
     "comments[0].like_count"),
])
def test_video_jsonl_with_wrong_field_types_names_the_field(tmp_path, capsys, record, field) -> None:
    (tmp_path / "v.jsonl").write_text(json.dumps(record) + "\n")
    one_line_error(capsys, ["prepare", str(tmp_path / "v.jsonl"), "--out", str(tmp_path / "o")],
                   "v.jsonl:1", f"'{field}'")
    assert not (tmp_path / "o").exists()


def test_lone_surrogates_are_errors_naming_file_and_field_everywhere(tmp_path, capsys) -> None:
    """JSON's lone `\\ud800` escape (or a non-UTF-8 argument) in a transcript file, a dataset/collect record or a
    command-line text is a one-line error naming where (was a TypeError / UnicodeEncodeError traceback, a 500)."""
    from vrp.artifacts import CollectDir
    from vrp.records import Video
    from vrp.transcripts import parse_transcript_bytes

    api = b'[{"text": "bad \\ud800 half", "start": 0, "duration": 1}]'
    with pytest.raises(VrpError, match=r"^x.json\[0\]: 'text' holds an unpaired surrogate U\+D800 at character 4"):
        parse_transcript_bytes(api, "x.json")
    with pytest.raises(VrpError, match=r"^s.json\[0\]: 'text' holds an unpaired surrogate"):
        parse_transcript_bytes(b'[{"start": 0, "end": 1, "text": "a \\udc00"}]', "s.json")
    with pytest.raises(VrpError, match=r"^c.json3: events\[0\].segs holds an unpaired surrogate"):
        parse_transcript_bytes(b'{"events": [{"tStartMs": 0, "segs": [{"utf8": "a \\ud800"}]}]}', "c.json3")
    with pytest.raises(VrpError, match=r"v.jsonl:3: field 'comments\[1\].text' holds an unpaired surrogate U\+DFFF"):
        Video.from_json({"video_id": "v", "transcript": "t", "comments": [{"text": "ok"}, {"text": "x\udfff"}]},
                        "v.jsonl:3")
    (tmp_path / "talk.json").write_bytes(api)
    one_line_error(capsys, ["generate", "--model", "m", "--input", str(tmp_path / "talk.json"), "--out",
                            str(tmp_path / "p.csv")], "talk.json[0]: 'text' holds an unpaired surrogate")
    one_line_error(capsys, ["generate", "--model", "m", "--transcript", "caf\udce9", "--out",
                            str(tmp_path / "p.csv")], "error: --transcript: the text holds the byte 0xE9 at character 3, which is not UTF-8 text")
    cd = tmp_path / "cd"
    cd.mkdir()
    (cd / CollectDir.VIDEOS).write_text(json.dumps({"id": "v1", "title": "t", "transcript": "hello there",
                                                    "comments": [{"text": "nice \ud800"}]}) + "\n")
    one_line_error(capsys, ["prepare", str(cd), "--out", str(tmp_path / "ds")],
                   "comments[0].text holds an unpaired surrogate U+D800")
    assert not (tmp_path / "ds").exists() and not (tmp_path / "p.csv").exists()
