"""Caption files -> segments -> clean text (`vrp.transcripts`) and the `vrp transcript` command."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import one_line_error

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
    with pytest.raises(VrpError, match=re.escape(message)):
        parse_transcript_bytes(data, name)


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


# --- markup, zero-duration cues and unnumbered SubRip cues, in every caption format vrp reads --------------------

COMPARISON = "if x < 5 and y > 3 we stop"
VTT_HEAD = "WEBVTT\n\n"


@pytest.mark.parametrize("name, data", [
    ("c.vtt", f"{VTT_HEAD}00:00:01.000 --> 00:00:03.000\n{COMPARISON}\n"),
    ("c.srt", f"1\n00:00:01,000 --> 00:00:03,000\n{COMPARISON}\n"),
    ("c.sbv", f"0:00:01.000,0:00:03.000\n{COMPARISON}\n"),
    ("c.json3", json.dumps({"events": [{"tStartMs": 1000, "dDurationMs": 2000, "segs": [{"utf8": COMPARISON}]}]})),
    ("c.json", json.dumps([{"text": COMPARISON, "start": 1.0, "duration": 2.0}])),
    ("c.json", json.dumps([{"start": 1.0, "end": 3.0, "text": COMPARISON}])),
])
def test_angle_brackets_that_open_no_tag_are_text_in_every_format(name, data):
    assert segments_to_text(parse_transcript_bytes(data.encode(), name)) == COMPARISON


@pytest.mark.parametrize("name, data, want", [
    ("t.vtt", f"{VTT_HEAD}00:00:01.000 --> 00:00:03.000\n<v.loud Esme>I <3 <c.yellow>this</c></v> <i>-></i> "
              f"<lang en-GB>colour</lang> <ruby>漢<rt>kan</rt></ruby><00:00:02.500> ok\n",
     "I <3 this -> colour 漢kan ok"),
    ("t.srt", '1\n00:00:01,000 --> 00:00:03,000\n<B>a</B> <font color="#ff0">b</font> <u>c</u> <s>d</s> > e\n',
     "a b c d > e"),
])
def test_real_tags_are_removed_and_other_angle_brackets_kept(name, data, want):
    assert segments_to_text(parse_transcript_bytes(data.encode(), name)) == want


@pytest.mark.parametrize("name, data", [
    ("z.vtt", f"{VTT_HEAD}00:00:01.000 --> 00:00:03.000\nwelcome\n\n00:00:05.000 --> 00:00:05.000\nsecret text\n\n"
              "00:00:06.000 --> 00:00:08.000\nhello\n"),
    ("z.srt", "1\n00:00:01,000 --> 00:00:03,000\nwelcome\n\n2\n00:00:05,000 --> 00:00:05,000\nsecret text\n\n"
              "3\n00:00:06,000 --> 00:00:08,000\nhello\n"),
    ("z.sbv", "0:00:01.000,0:00:03.000\nwelcome\n\n0:00:05.000,0:00:05.000\nsecret text\n\n"
              "0:00:06.000,0:00:08.000\nhello\n"),
    ("z.json3", json.dumps({"events": [{"tStartMs": 1000, "dDurationMs": 2000, "segs": [{"utf8": "welcome"}]},
                                       {"tStartMs": 5000, "dDurationMs": 0, "segs": [{"utf8": "secret text"}]},
                                       {"tStartMs": 6000, "dDurationMs": 2000, "segs": [{"utf8": "hello"}]}]})),
    ("z.json", json.dumps([{"text": "welcome", "start": 1, "duration": 2},
                           {"text": "secret text", "start": 5, "duration": 0},
                           {"text": "hello", "start": 6, "duration": 2}])),
])
def test_zero_duration_cues_are_not_transcript(name, data):
    assert segments_to_text(parse_transcript_bytes(data.encode(), name)) == "welcome hello"


def test_a_hidden_zero_duration_cue_no_longer_makes_a_plain_track_rolling():
    """A zero-duration cue used to count as a rolling-caption snapshot, which removed a speaker's real repeats."""
    data = (f"{VTT_HEAD}00:00:01.000 --> 00:00:02.000\nno no\n\n00:00:02.000 --> 00:00:02.000\nnote\n\n"
            "00:00:02.000 --> 00:00:03.000\nno no\n")
    assert segments_to_text(parse_transcript_bytes(data.encode(), "r.vtt")) == "no no no no"


def test_times_missing_from_json_are_unknown_not_zero_and_text_files_keep_their_text(tmp_path):
    data = json.dumps({"events": [{"tStartMs": 0, "segs": [{"utf8": "no duration given"}]}]})
    assert segments_to_text(parse_transcript_bytes(data.encode(), "a.json3")) == "no duration given"
    assert parse_transcript_bytes(b"plain words", "a.txt") == [Segment(0.0, 0.0, "plain words")]
    # `vrp transcript --format json` of a .txt gives start == end == 0; reading that back keeps the text
    assert segments_to_text(parse_transcript_bytes(json.dumps([{"start": 0, "end": 0, "text": "x"}]).encode(),
                                                   "a.json")) == "x"


UNNUMBERED = ("00:00:01,000 --> 00:00:02,000\nfirst\n\n00:00:03,000 --> 00:00:04,000\nsecond line\nand more\n\n"
              "00:00:05,500 --> 00:00:06,000\nthird\n")


def test_srt_without_cue_numbers_is_read_as_pysrt_reads_it(tmp_path):
    segments = parse_transcript_bytes(UNNUMBERED.encode(), "n.srt")
    assert segments == [Segment(1.0, 2.0, "first"), Segment(3.0, 4.0, "second line and more"),
                        Segment(5.5, 6.0, "third")]
    path = tmp_path / "n.srt"
    path.write_text(UNNUMBERED.replace("\n", "\r\n"), encoding="utf-8")
    assert segments_to_text(read_transcript(path)) == "first second line and more third"


def test_srt_with_some_cue_numbers_missing_and_cues_without_blank_lines():
    mixed = ("1\n00:00:01,000 --> 00:00:02,000\none\n\n00:00:03,000 --> 00:00:04,000\ntwo\n\n"
             "7\n00:00:05,000 --> 00:00:06,000\nthree\n00:00:07,000 --> 00:00:08,000\nfour\n")
    assert [(s.start, s.text) for s in parse_transcript_bytes(mixed.encode(), "m.srt")] == [
        (1.0, "one"), (3.0, "two"), (5.0, "three"), (7.0, "four")]


def test_a_file_that_is_not_srt_still_says_what_an_srt_starts_with():
    with pytest.raises(VrpError, match=r"x\.srt: not a valid SubRip \(\.srt\) file; it must start with a cue number "
                                       r"or a timing line"):
        parse_transcript_bytes(b"just some words\nmore words\n", "x.srt")


# --- bad caption files: one line naming the file -------------------------------------------------------------
@pytest.mark.parametrize("content, name", [
    ('[{"text": "a", "start": "NaN", "duration": 1}]', "api.json"),
    ('[{"text": "a", "start": 1e400, "duration": 1}]', "inf.json"),
    ('[{"text": "a", "start": 0, "end": 1e999}]', "seg.json"),
    ('{"events": [{"segs": [{"utf8": "hi"}], "tStartMs": 1e400}]}', "yt.json3"),
])
def test_transcript_non_finite_times_are_errors_not_invalid_json(tmp_path, capsys, content, name) -> None:
    (tmp_path / name).write_text(content)
    one_line_error(capsys, ["transcript", str(tmp_path / name), "--format", "json"], name)


@pytest.mark.parametrize("content, name", [(b"", "e.txt"), (b"\xef\xbb\xbf  \n", "bom.txt"), (b"[]", "e.json")])
def test_transcript_of_an_empty_file_is_an_error(tmp_path, capsys, content, name) -> None:
    (tmp_path / name).write_bytes(content)
    one_line_error(capsys, ["transcript", str(tmp_path / name)], name, "no transcript text")
    (tmp_path / "d.vtt").mkdir()
    one_line_error(capsys, ["transcript", str(tmp_path / "d.vtt")], "d.vtt", "directory")


# --- ASS/SSA override tags, invisible format characters, YouTube Studio .sbv ------------------------------------
ISSUE_SRT = ("1\n00:00:01,000 --> 00:00:03,000\n{\\an8}Welcome back to the channel\n\n"
             "2\n00:00:03,000 --> 00:00:05,000\n{\\i1}today{\\i0} we bake bread\n")


ISSUE_TEXT = "Welcome back to the channel today we bake bread"


def text_of(data: bytes, name: str) -> str:
    return " ".join(s.text for s in parse_transcript_bytes(data, name))


def test_ass_override_tags_are_stripped_from_srt():
    assert text_of(ISSUE_SRT.encode(), "a.srt") == ISSUE_TEXT


@pytest.mark.parametrize("name, data", [
    # WebVTT exported by a subtitle editor: position + colour overrides in one block, \N hard line break, \h space
    ("b.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:03.000\n{\\pos(320,50)\\c&H00FFFF&}first line\\Nsecond\\hline\n"),
    # YouTube json3 whose text came from an ASS upload
    ("c.json3", json.dumps({"events": [{"tStartMs": 0, "dDurationMs": 900,
                                        "segs": [{"utf8": "{\\b1}first line{\\b0} second"}, {"utf8": " line"}]}]})),
    ("d.sbv", "0:00:01.000,0:00:03.000\n{\\fad(200,200)}first line\nsecond line\n"),
])
def test_ass_overrides_and_escapes_in_other_caption_formats(name, data):
    assert text_of(data.encode(), name) == "first line second line"


def test_braces_without_an_override_code_are_text():
    srt = "1\n00:00:01,000 --> 00:00:02,000\nthe set {a, b} is small\n"
    assert text_of(srt.encode(), "e.srt") == "the set {a, b} is small"


def test_left_to_right_mark_before_the_first_cue_number():
    assert text_of(("\u200e" + ISSUE_SRT).encode(), "lrm.srt") == ISSUE_TEXT


@pytest.mark.parametrize("name, data", [
    # RLM before a timing line, a second BOM from concatenated files before a cue number, a ZWSP before a timing
    ("rtl.srt", "\u200f1\n\u200f00:00:01,000 --> 00:00:02,000\n\u200fhello\n\n\ufeff2\n"
                "\u200b00:00:02,000 --> 00:00:03,000\nwor\u200bld\n"),
    ("hdr.vtt", "\u200eWEBVTT\n\n\u206600:00:01.000 --> 00:00:02.000\u2069\nhello\n\n00:00:02.000 --> "
                "00:00:03.000\nworld\n"),
    ("lrm.sbv", "\u200e0:00:01.000,0:00:02.000\nhello\n\n\u200e0:00:02.000,0:00:03.000\nworld\n"),
    ("lrm.json3", "\u200e\ufeff" + json.dumps({"events": [{"tStartMs": 1000, "dDurationMs": 2000,
                                                         "segs": [{"utf8": "hello world"}]}]})),
])
def test_format_characters_in_other_positions_and_formats(name, data):
    segments = parse_transcript_bytes(data.encode(), name)
    assert " ".join(s.text for s in segments) == "hello world"
    assert segments[0].start == 1.0


def test_a_line_of_format_characters_inside_rolling_captions_keeps_the_cue():
    # YouTube's rolling captions hold a " " line inside a cue; a ZWSP line must behave the same way
    vtt = "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n\u200b\ngood morning\n"
    assert parse_transcript_bytes(vtt.encode(), "z.vtt") == [Segment(0.0, 2.0, "good morning")]


SBV = "0:00:01.000,0:00:03.000\nhello from\nYouTube Studio\n\n1:02:03.500,1:02:05.000\nsee you\n"


def test_sbv_is_read_by_transcript_and_generate_input(tmp_path, capsys):
    path = tmp_path / "studio.sbv"
    path.write_text(SBV, encoding="utf-8")
    assert read_transcript(path) == [Segment(1.0, 3.0, "hello from YouTube Studio"),
                                     Segment(3723.5, 3725.0, "see you")]
    assert main(["transcript", str(path)]) == 0
    assert capsys.readouterr().out == "hello from YouTube Studio see you\n"
    from vrp.generate.run import load_inputs

    videos = load_inputs(str(path), title="Studio export")
    assert [(v.video_id, v.title, v.transcript) for v in videos] == [
        ("studio", "Studio export", "hello from YouTube Studio see you")]


def test_sbv_with_upper_case_suffix_bom_and_crlf():
    data = ("\ufeff" + SBV).replace("\n", "\r\n").encode("utf-8")
    assert text_of(data, "EXPORT.SBV") == "hello from YouTube Studio see you"


# --- malformed timing lines and JSON: errors naming file, line and the line ------------------------------------
SRT_OK = "1\n00:00:01,000 --> 00:00:02,000\nfirst\n\n2\n00:00:02,000 --> 00:00:02,500\nsecond\n\n"


@pytest.mark.parametrize("name, text, line, shown", [
    ("a.sbv", "0:00:01.000,0:00:03.000\nhello\n\nbad,line\nworld\n", 4, "bad,line"),
    ("b.sbv", "0:00:01.000,0:00:03.000\nhello\n\n0:00:04.000-0:00:05.000\nworld\n", 4, "0:00:04.000-0:00:05.000"),
    ("a.vtt", "WEBVTT\n\n00:00:00.500 --> 00:00:01.000\nok\n\n00:00:01.000 --> 00:00:0x.000\nlost\n", 6,
     "00:00:01.000 --> 00:00:0x.000"),
    ("b.vtt", "WEBVTT\n\n00:00:01.000 --> garbage\nonly\n", 3, "00:00:01.000 --> garbage"),
    ("c.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nhello\n\nworld\n", 6, "world"),  # text outside any cue
    ("d.vtt", "WEBVTT\n\n00:00:01.000 --> 00:01:70.000\nseventy seconds\n", 3, "00:00:01.000 --> 00:01:70.000"),
    ("a.srt", SRT_OK + "3\n00:00:02,000 -> 00:00:03,000\nthird\n", 10, "00:00:02,000 -> 00:00:03,000"),
    ("b.srt", "1\n00:00:05,000 --> 00:00:02,000\nbackwards\n", 2, "00:00:05,000 --> 00:00:02,000"),
    ("c.srt", "1\n-00:00:01,000 --> 00:00:02,000\nnegative\n", 2, "-00:00:01,000 --> 00:00:02,000"),
    ("d.srt", "\ufeff\n1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03,000 ---> 00:00:04,000\nx\n", 7,
     "00:00:03,000 ---> 00:00:04,000"),  # a blank line before the first cue still counts
])
def test_a_malformed_timing_line_names_file_line_and_the_line(name, text, line, shown):
    with pytest.raises(VrpError, match=rf"^{re.escape(name)}:{line}: .*{re.escape(repr(shown))}"):
        parse_transcript_bytes(text.encode(), name)


def test_valid_captions_around_the_timing_checks_still_parse():
    srt = "1\n00:00:01,000 --> 00:00:02,000\nhello\n\nsame cue after a blank line\n\n2\n00:00:03.000 --> 00:00:04,000\nbye\n"
    assert text_of(srt.encode(), "ok.srt") == "hello same cue after a blank line bye"
    vtt = ("WEBVTT\nKind: captions\n\nNOTE a --> inside a note\n\nSTYLE\n::cue { color: red }\n\n"
           "intro\n00:01.000 --> 00:02.000 align:start\nhi\n")
    assert text_of(vtt.encode(), "ok.vtt") == "hi"


@pytest.mark.parametrize("event, message", [
    ({"tStartMs": "1000", "segs": [{"utf8": "a"}]}, "events[0].tStartMs must be a number"),
    ({"tStartMs": 0, "dDurationMs": True, "segs": [{"utf8": "a"}]}, "events[0].dDurationMs must be a number"),
    ({"tStartMs": -5, "segs": [{"utf8": "a"}]}, "events[0].tStartMs must be a number of milliseconds >= 0"),
    ({"tStartMs": 0, "segs": [{"utf8": "a"}, {"utf8": 5}]}, "events[0].segs[1].utf8 must be text, got 5"),
])
def test_json3_with_bad_types_names_the_event(event, message):
    with pytest.raises(VrpError, match=r"^y\.json3: " + message.replace("[", r"\[").replace("]", r"\]")):
        parse_transcript_bytes(json.dumps({"events": [event]}).encode(), "y.json3")


def test_deeply_nested_json_is_one_line_error_in_transcript_and_generate(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["transcript", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}: invalid JSON (nested too deeply to read)"
    from vrp.generate.run import load_inputs

    with pytest.raises(VrpError, match="deep.json: invalid JSON"):
        load_inputs(str(path))
    with pytest.raises(VrpError, match=r"deep\.json3: invalid JSON \(nested"):
        parse_transcript_bytes(b'{"events": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "deep.json3")


@pytest.mark.parametrize(("timing", "why"), [
    ("99999999999999999999:00:00.000 --> 99999999999999999999:00:01.000", "invalid timing (hours must have at most 5"),
    ("00:00:01.000 --> 00:00:0\uff15.000", "malformed timing line"),  # a full-width digit
])
def test_timing_lines_webvtt_py_would_drop_are_errors(tmp_path, timing, why):
    """A huge hour field and non-ASCII digits: webvtt-py skipped such a cue without a word (its text was lost)."""
    path = tmp_path / "c.vtt"
    path.write_text(f"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhello\n\n{timing}\nbody\n", encoding="utf-8")
    with pytest.raises(VrpError, match=rf"c.vtt:6: {re.escape(why)}"):
        read_transcript(path)
