"""Caption files -> segments -> clean text (`vrp.transcripts`) and the `vrp transcript` command."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vrp.cli import main
from vrp.errors import VrpError
from vrp.transcripts import Segment, parse_json_transcript, parse_transcript_bytes, read_transcript, segments_to_text

FIX = Path(__file__).parent / "fixtures" / "collect"


def test_rolling_automatic_captions_keep_each_phrase_once():
    segments = read_transcript(FIX / "rolling_auto.en.vtt")
    assert segments == [Segment(0.0, 2.0, "good morning everyone"), Segment(2.01, 4.0, "welcome back")]
    assert segments_to_text(segments) == "good morning everyone welcome back"


def test_speaker_repeating_a_word_across_plain_cues_keeps_every_word():
    segments = read_transcript(FIX / "repeated_speech.vtt")
    assert [s.text for s in segments] == ["no no", "no"]
    assert segments_to_text(segments) == "no no no"


def test_inline_timing_tags_are_stripped():
    assert segments_to_text(read_transcript(FIX / "inline_tag.vtt")) == "word next"


def test_double_encoded_entities_are_decoded():
    assert segments_to_text(read_transcript(FIX / "entities.vtt")) == "it's fine & calm"


def test_srt_with_utf8_bom_keeps_its_first_cue():
    assert (FIX / "bom.srt").read_bytes().startswith(b"\xef\xbb\xbf1")
    segments = read_transcript(FIX / "bom.srt")
    assert segments == [Segment(0.5, 2.0, "first cue"), Segment(2.0, 3.5, "second cue")]


def test_vtt_with_bom_and_cue_settings():
    data = "\ufeffWEBVTT\n\n00:01:02.250 --> 00:01:03.000 align:start position:0% line:90%\nhello\n".encode()
    assert parse_transcript_bytes(data, "x.vtt") == [Segment(62.25, 63.0, "hello")]


def test_json3_events_become_segments_and_annotations_are_optional():
    segments = read_transcript(FIX / "captions.en.json3")
    assert segments == [Segment(0.08, 2.08, "[Music]"), Segment(2.08, 4.0, "hello world"),
                        Segment(4.0, 6.5, "it's json3")]
    assert segments_to_text(segments) == "hello world it's json3"
    assert segments_to_text(segments, drop_annotations=False) == "[Music] hello world it's json3"


def test_transcript_api_json():
    segments = read_transcript(FIX / "transcript_api.json")
    assert segments == [Segment(0.0, 1.5, "[Music]"), Segment(1.5, 3.5, "we're live"),
                        Segment(3.0, 5.25, "thanks for watching")]
    assert segments_to_text(segments) == "we're live thanks for watching"


def test_segment_json_and_wrapped_forms():
    rows = [{"start": 1, "end": 2.5, "text": "a &amp; b"}, {"start": 3, "text": " "}]
    assert parse_json_transcript(rows) == [Segment(1.0, 2.5, "a & b")]
    assert parse_json_transcript({"snippets": [{"text": "x", "start": 1, "duration": 1}]}) == [Segment(1, 2, "x")]
    assert parse_json_transcript([[{"text": "y", "start": 2, "duration": 0.5}]]) == [Segment(2, 2.5, "y")]
    with pytest.raises(VrpError, match="holds 2 transcripts"):
        parse_json_transcript([[], []], "two.json")


def test_plain_text_upload_is_one_segment():
    assert parse_transcript_bytes("\ufeffhello\n  world ".encode(), "talk.txt") == [Segment(0.0, 0.0, "hello world")]
    assert parse_transcript_bytes(b"  \n", "empty.txt") == []


def test_utf16_srt_is_decoded():
    data = "1\n00:00:00,000 --> 00:00:01,000\ngrüß dich\n".encode("utf-16")
    assert parse_transcript_bytes(data, "de.srt") == [Segment(0.0, 1.0, "grüß dich")]


@pytest.mark.parametrize("data, name, message", [
    (b"WEBVTT\n", "a.pdf", "a.pdf: unsupported transcript file type '.pdf'"),
    (b"00:00:00.000 --> 00:00:01.000\nhi\n", "a.vtt", "a.vtt: not a valid WebVTT file"),
    (b"hello\n", "b.srt", "b.srt: not a valid SubRip (.srt) file"),
    (b"\xff\x00abc", "c.srt", "c.srt: not UTF-8 text ("),
    (b'{"events": [', "d.json3", "d.json3:1: invalid JSON"),
    (b'{"foo": 1}', "e.json", "e.json: unknown JSON transcript"),
    (b'[{"text": "x", "start": "soon", "duration": 1}]', "f.json", "f.json[0]: 'start'/'duration' must be numbers"),
])
def test_bad_input_names_the_file(data, name, message):
    with pytest.raises(VrpError) as e:
        parse_transcript_bytes(data, name)
    assert message in str(e.value)


def test_missing_file_is_a_vrp_error(tmp_path):
    with pytest.raises(VrpError, match="file not found"):
        read_transcript(tmp_path / "nope.vtt")


def test_cli_transcript_prints_text_and_json(capsys):
    assert main(["transcript", str(FIX / "rolling_auto.en.vtt")]) == 0
    assert capsys.readouterr().out == "good morning everyone welcome back\n"
    assert main(["transcript", str(FIX / "captions.en.json3"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[1] == {"start": 2.08, "end": 4.0, "text": "hello world"}
    assert main(["transcript", str(FIX / "transcript_api.json"), "--keep-annotations"]) == 0
    assert capsys.readouterr().out.startswith("[Music] we're live")
    assert main(["transcript", str(FIX / "missing.srt")]) == 2
    assert "missing.srt: file not found" in capsys.readouterr().err
