"""Cleaning rules of `vrp.clean`, one test per rule, with the small inputs of issue 5."""
from __future__ import annotations

import pytest

from vrp import clean, likes

CODER = "\U0001F468\u200d\U0001F4BB"  # 👨‍💻: man, ZWJ, laptop
FLAG_FR = "\U0001F1EB\U0001F1F7"
THUMB_MEDIUM = "\U0001F44D\U0001F3FD"


# --- captions -------------------------------------------------------------------------------------------------

def test_unescape_entities_decodes_double_encoded_text():
    assert clean.unescape_entities("it&amp;#39;s fine &amp;amp; calm") == "it's fine & calm"
    assert clean.unescape_entities("&lt;3 &quot;ok&quot;") == '<3 "ok"'
    assert clean.unescape_entities("plain & simple") == "plain & simple"


def test_strip_tags_removes_inline_timing_and_cue_tags():
    assert clean.strip_tags("word<00:00:01.000><c> next</c>") == "word next"
    assert clean.strip_tags("<v Roger Bingham>We are in <i>New York</i>") == "We are in New York"
    assert clean.clean_caption_line('<font color="#ffff00">it&amp;#39;s</font>   here ') == "it's here"


@pytest.mark.parametrize("text", ["if x < 5 and y > 3 we stop", "I <3 you >_<", "a -> b <= c", "<no tag here>",
                                  "<i love it>", "x<y and y>z", "&lt;i&gt; is the tag"])
def test_strip_tags_keeps_angle_brackets_that_open_no_tag(text):
    assert clean.strip_tags(text) == text


def test_remove_annotations_drops_bracketed_sound_labels_but_not_speech():
    assert clean.remove_annotations("[Music] so [Applause] today ♪ la ♪ (really)") == "so today la (really)"
    assert clean.remove_annotations("arrays like a[i] work") == "arrays like a[i] work"


def test_join_segments_uses_single_spaces():
    assert clean.join_segments(["  hello\nthere ", "", "world  "]) == "hello there world"


def test_rolling_captions_detected_by_inline_timestamps_or_snapshot_cues():
    assert clean.is_rolling_captions(["a<00:00:01.000><c> b</c>"], [2.0])
    assert clean.is_rolling_captions(["a", "a"], [2.0, 0.01])
    assert not clean.is_rolling_captions(["no no", "no"], [1.5, 0.7])


def test_remove_rolling_repeats_keeps_each_line_once():
    cues = [["good morning everyone"], ["good morning everyone"], ["good morning everyone", "welcome back"],
            ["welcome back"], ["welcome back", "to the show"]]
    assert clean.remove_rolling_repeats(cues) == [["good morning everyone"], [], ["welcome back"], [],
                                                  ["to the show"]]


def test_remove_rolling_repeats_keeps_a_phrase_really_said_twice():
    # The speaker says "good morning" twice: the second one arrives as a new line under the carried-over one.
    cues = [["good morning"], ["good morning"], ["good morning", "good morning"], ["good morning", "good morning"],
            ["good morning", "everyone"]]
    kept = [line for lines in clean.remove_rolling_repeats(cues) for line in lines]
    assert kept == ["good morning", "good morning", "everyone"]


# --- comments -------------------------------------------------------------------------------------------------

def test_remove_invisible_keeps_emoji_zwj_and_drops_zero_width_characters():
    assert clean.remove_invisible(f"{CODER} great video\ufeff") == f"{CODER} great video"
    assert clean.remove_invisible("a\u200bb\u2060c\ufeffd\u200ee") == "abcde"
    assert clean.remove_invisible("wow\u200d nice\u200d") == "wow nice"  # ZWJ not between pictographs
    persian = "می\u200cخواهم"  # ZWNJ is part of Persian spelling
    assert clean.remove_invisible(persian) == persian
    assert clean.remove_invisible("a\u200cb") == "ab"


def test_clean_comment_text_example_of_the_issue():
    assert clean.clean_comment_text(f"{CODER} great video\ufeff") == f"{CODER} great video"


def test_normalize_whitespace_collapses_spaces_and_blank_lines():
    text = "  great\u00a0\u00a0 explanation \r\n\r\n\r\n\r\nthanks\t!  "
    assert clean.normalize_whitespace(text) == "great explanation\n\nthanks !"


def test_truncate_never_cuts_inside_a_grapheme_cluster():
    text = f"{CODER} great video"
    assert clean.truncate_graphemes(text, 2) == CODER
    assert clean.truncate_graphemes(text, 1) == CODER
    assert clean.truncate_graphemes(text, 0) == ""
    assert clean.truncate_graphemes(text, 7) == f"{CODER} great"
    assert clean.truncate_graphemes(f"{FLAG_FR}{THUMB_MEDIUM}e\u0301x", 3) == f"{FLAG_FR}{THUMB_MEDIUM}e\u0301"
    assert clean.truncate_graphemes("short", 10) == "short"
    assert clean.truncate_graphemes("abcdefgh", 5, ellipsis="…") == "abcd…"
    for n in range(len(text) + 1):  # no prefix ever ends with a dangling ZWJ or a lone half of the sequence
        want = "" if n == 0 else (CODER + " great video"[:n - 1]).rstrip()  # CODER is one grapheme
        assert clean.truncate_graphemes(text, n) == want, n
    with pytest.raises(ValueError, match=r"^max_graphemes must be >= 0, got -1$"):
        clean.truncate_graphemes(text, -1)


@pytest.mark.parametrize("display, count", [
    ("1.2K likes", 1200), ("2.3M", 2_300_000), ("3,1K", 3100), ("1,234", 1234), ("", None), ("Like", None),
    ("15", 15), ("1.5B", 1_500_000_000), ("5 bananas", 5), ("12k", 12_000), ("1 234", 1234), (None, None), (57, 57),
    (-3, None), (float("nan"), None), ("1e400", None), ("1e10000000", None), (10**13, None),
])
def test_parse_like_count_reads_display_text(display, count):
    assert likes.parse_like_count(display) == count


@pytest.mark.parametrize("value", ["1e5000", "1e10000000", "1e400", 10**5000, 1e300, "1000000000001", "2000B"],
                         ids=["1e5000", "1e10000000", "1e400", "int-5000-digits", "float-1e300", "10^12+1", "2000B"])
def test_huge_like_counts_are_rejected_before_an_int_is_built(value):
    with pytest.raises(ValueError, match="larger than 10\\^12"):
        likes.parse_like_count(value, strict=True)
    assert likes.parse_like_count(10**12, strict=True) == 10**12  # the bound itself is a count


def test_dedupe_by_id_keeps_a_pinned_comment_once():
    comments = [{"id": "p1", "text": "pinned", "is_pinned": True}, {"id": "c2", "text": "other"},
                {"id": "p1", "text": "pinned", "is_pinned": False}, {"text": "no id"}, {"text": "no id"}]
    kept, dropped = clean.dedupe_by_id(comments)
    assert [c.get("id") for c in kept] == ["p1", "c2", None, None]
    assert dropped == 1
    assert kept[0]["is_pinned"] is True


def test_link_only_spam_is_detected():
    assert clean.is_link_only("https://spam.example.com/win 🔥🔥")
    assert clean.is_link_only("www.free-gift.xyz !!!")
    assert clean.is_link_only("bit.ly/abc")
    assert not clean.is_link_only("see https://example.com for the paper, it is great")
    assert not clean.is_link_only("no links here")


def test_timestamp_lists_are_detected():
    assert clean.is_timestamps_only("0:45 1:30, 1:02:03")
    assert clean.is_timestamps_only("12:03 - 14:10 | 20:00")
    assert not clean.is_timestamps_only("2:30 best part")
    assert not clean.is_timestamps_only("3 times")


def test_comment_drop_reason_order_and_uploader_option():
    assert clean.comment_drop_reason({"parent": "abc"}, "hi") == "reply"
    assert clean.comment_drop_reason({"author_is_uploader": True}, "thanks all") == "by_uploader"
    assert clean.comment_drop_reason({"author_is_uploader": True}, "thanks all", drop_uploader=False) is None
    assert clean.comment_drop_reason({}, "") == "empty"
    assert clean.comment_drop_reason({}, "  \n") == "empty"
    assert clean.comment_drop_reason({}, "https://x.com/a") == "link_only"
    assert clean.comment_drop_reason({}, "1:02 2:45") == "timestamps_only"
    assert clean.comment_drop_reason({"parent": "root"}, f"{CODER} great video") is None


def test_a_suffixed_count_with_marks_that_are_no_thousands_groups_is_refused() -> None:
    """With a K/M/B suffix the last mark is the decimal mark and earlier ones may only group thousands:
    `1,234.5K` is 1234500, but `1.2.3K` (was read as 12300) and `1,2,3K` fit no form."""
    parse_like_count = likes.parse_like_count
    assert parse_like_count("1,234.5K", strict=True) == 1_234_500 and parse_like_count("3,1K", strict=True) == 3100
    assert parse_like_count("1 234K", strict=True) == 1_234_000 and parse_like_count("1'234,5K", strict=True) == 1_234_500
    for text in ("1.2.3K", "1,2,3K", "1 2K", "1'2K"):  # spaces and apostrophes group thousands too (`1 2K` was 12000)
        with pytest.raises(ValueError, match="mixes digits and separators"):
            parse_like_count(text, strict=True)
        assert parse_like_count(text) is None  # lenient: unknown, not a made-up count
