"""Text cleaning rules for captions and viewer comments, one named function per rule.

Knows: how YouTube captions and comments are dirty (HTML entities, sometimes double-encoded; WebVTT cue tags and
inline word-timing tags; ASS/SSA override blocks such as `{\\an8}` left by subtitle editors; `[Music]`-style
annotations; the repeated lines of rolling automatic captions; zero-width characters, direction marks and BOMs,
also around caption structure lines; link-only spam and timestamp lists) and how to clean or read each; that
text must be Unicode (`check_text`: no unpaired surrogates).
Grapheme clusters follow Unicode UAX #29 through the `regex` module's `\\X` (a dependency).
Does not know: like counts (`vrp.likes`), file formats (see `vrp.transcripts`), where comments come from (see
`vrp.collect.fetch`) or records (see `vrp.collected`). Depends only on `vrp.errors`.
"""
from __future__ import annotations

import html
import re
import unicodedata
from typing import Any, Iterable, Mapping, Sequence

import regex  # UAX #29 grapheme clusters and Unicode emoji properties

from vrp.errors import VrpError

# ---------------------------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------------------------

# A WebVTT timestamp tag such as <00:00:01.000> or <01:02.500> (WebVTT cue text "timestamp tag").
INLINE_TIMESTAMP_RE = re.compile(r"<(?:\d+:)?\d{2}:\d{2}\.\d{3}>")
# The markup tags of caption text, and only those: WebVTT's cue text tags (W3C WebVTT, "cue text": c, i, b, u, ruby, rt
# with optional .classes; v and lang with an annotation; their end tags; timestamp tags) and the HTML-like tags SRT
# players show (b, i, u, s, font with attributes; any case). Text with a `<` or `>` that opens no such tag (`if x < 5
# and y > 3`, `<3`, `->`) is text; webvtt-py and pysrt remove any `<...>`, and the words between with it.
_TAG_RE = re.compile(r"<(?:c|i|b|u|s|ruby|rt)(?:\.[\w-]+)*>"
                     r"|<(?:v|lang)(?:\.[\w-]+)*(?:[ \t][^<>]*)?>"
                     r"|<font(?:[ \t][^<>]*)?>"
                     r"|</(?:c|i|b|u|s|ruby|rt|v|lang|font)[ \t]*>"
                     r"|<(?:\d+:)?\d{2}:\d{2}\.\d{3}>", re.IGNORECASE)
_BREAK_TAG_RE = re.compile(r"<br[ \t]*/?>", re.IGNORECASE)  # an SRT line break some editors write
_ANNOTATION_RE = re.compile(r"(?<!\w)\[[^\[\]\n]{1,40}\]|[♪♫♬]+")
_SPACES_RE = re.compile(r"\s+")
# A cue this short (seconds) only re-displays text: YouTube's rolling captions emit 10 ms "snapshot" cues.
SNAPSHOT_MAX_S = 0.05


def unescape_entities(text: str, max_rounds: int = 3) -> str:
    """Decode HTML character references, repeatedly, so double-encoded text (`&amp;#39;`) becomes `'`.

    Stops when a round changes nothing or after `max_rounds` rounds.
    """
    for _ in range(max_rounds):
        decoded = html.unescape(text)
        if decoded == text:
            break
        text = decoded
    return text


def strip_tags(text: str) -> str:
    """Remove markup tags: WebVTT cue tags (`<c>`, `<c.yellow>`, `<v Name>`, `<i>`, `<lang en>`, `<ruby>`, `<rt>`),
    inline timing tags (`<00:00:01.000>`), and the HTML-like tags of SRT (`<font color=..>`, `<b>`, `<u>`, `<s>`;
    `<br>` becomes a space). The text inside the tags is kept, and so is a `<` or `>` that opens no tag
    (`if x < 5 and y > 3 we stop` stays whole)."""
    return _TAG_RE.sub("", _BREAK_TAG_RE.sub(" ", text))


# An ASS/SSA override block: braces holding backslash codes such as {\an8}, {\i1}, {\pos(10,20)\c&H00FFFF&}
# (Advanced SubStation Alpha v4+ spec, "Style override codes": every code starts with a backslash, codes sit in
# braces). Subtitle tools (Aegisub, Subtitle Edit) keep them when they export SRT or WebVTT.
_ASS_OVERRIDE_RE = re.compile(r"\{\s*\\[^{}]*\}")
# The ASS text escapes: \N hard line break, \h hard space (same spec, "Special codes").
_ASS_ESCAPE_RE = re.compile(r"\\[Nh]")


def strip_ass_overrides(text: str) -> str:
    """Remove ASS/SSA override blocks (`{\\an8}`, `{\\i1}`, `{\\b1}`, `{\\pos(320,50)}`, `{\\c&H00FFFF&}`, ...) and
    turn the `\\N` and `\\h` escapes into spaces. Braces without a backslash code are kept (they may be text)."""
    return _ASS_ESCAPE_RE.sub(" ", _ASS_OVERRIDE_RE.sub("", text))


def is_format_char(ch: str) -> bool:
    """True for an invisible Unicode format character (general category Cf): LRM/RLM, ZWSP, ZWJ/ZWNJ, BOM/ZWNBSP,
    word joiner, bidi embeddings and isolates, soft hyphen, Arabic number signs, tag characters."""
    return unicodedata.category(ch) == "Cf"


def strip_format_chars(line: str) -> str:
    """Strip whitespace and invisible format characters (category Cf) from both ends of one line, so that a cue
    number, timing line or `WEBVTT` header preceded by a left-to-right mark or a stray BOM is recognised. A line
    with nothing else keeps its length, its format characters turned into spaces (`"\\u200b"` -> `" "`): caption
    readers treat an empty line and a line of spaces differently (YouTube's rolling captions hold a `" "` line)."""
    start, end = 0, len(line)
    while start < end and (line[start].isspace() or is_format_char(line[start])):
        start += 1
    if start == end:
        return "".join(" " if is_format_char(ch) else ch for ch in line)
    while end > start and (line[end - 1].isspace() or is_format_char(line[end - 1])):
        end -= 1
    return line[start:end]


def collapse_spaces(text: str) -> str:
    """Replace every run of whitespace (newlines included) with one space and strip both ends."""
    return _SPACES_RE.sub(" ", text).strip()


def clean_caption_line(line: str) -> str:
    """One caption line as plain text: markup tags and ASS override blocks stripped, then entities decoded, then
    invisible characters removed (`remove_invisible`) and whitespace collapsed."""
    return collapse_spaces(remove_invisible(unescape_entities(strip_ass_overrides(strip_tags(line)))))


def remove_annotations(text: str) -> str:
    """Remove non-speech annotations: square-bracketed `[Music]`, `[Applause]`, `[Laughter]` (at most 40
    characters inside, not glued to a preceding word as in `a[i]`) and music-note symbols. Parenthesised text is
    kept: it may be speech."""
    return collapse_spaces(_ANNOTATION_RE.sub(" ", text))


def join_segments(texts: Iterable[str]) -> str:
    """Join segment texts with single spaces, skipping empty ones."""
    return collapse_spaces(" ".join(t for t in texts if t))


def has_inline_timestamps(raw_cue_text: str) -> bool:
    """True when a raw cue text holds WebVTT timestamp tags, the mark of YouTube's word-by-word captions."""
    return bool(INLINE_TIMESTAMP_RE.search(raw_cue_text))


def is_rolling_captions(raw_cue_texts: Sequence[str], durations_s: Sequence[float]) -> bool:
    """Guess whether a caption track is YouTube's rolling automatic captions (each cue repeats the previous line).

    Evidence: inline timestamp tags in any cue, or any snapshot cue lasting at most `SNAPSHOT_MAX_S` seconds.
    Plain tracks are left alone, so a speaker's real repetition is never removed from them.
    """
    return any(has_inline_timestamps(t) for t in raw_cue_texts) or any(d <= SNAPSHOT_MAX_S for d in durations_s)


def remove_rolling_repeats(cue_lines: Sequence[Sequence[str]]) -> list[list[str]]:
    """Drop the lines each cue carries over from the previous cue in rolling captions.

    `cue_lines[i]` holds the clean, non-empty lines of cue i in time order. For each cue, the longest prefix of its
    lines that equals a suffix of the previous cue's lines is removed (a 10 ms snapshot cue thus loses all its
    lines; a cue showing "line A / line B (building)" after "line A" keeps "line B"). Only whole lines are compared,
    so a phrase the speaker said twice, which appears as a new line, survives. Returns the remaining lines per cue
    (same length as the input; a list may be empty). Call it only on rolling tracks (`is_rolling_captions`).
    """
    out: list[list[str]] = []
    prev: Sequence[str] = []
    for lines in cue_lines:
        lines = list(lines)
        overlap = 0
        for k in range(min(len(lines), len(prev)), 0, -1):
            if list(prev[len(prev) - k:]) == lines[:k]:
                overlap = k
                break
        out.append(lines[overlap:])
        prev = lines
    return out


# ---------------------------------------------------------------------------------------------------------------
# Comments
# ---------------------------------------------------------------------------------------------------------------

ZWJ, ZWNJ = "\u200d", "\u200c"
# Always invisible and meaningless in a comment: zero-width space, word joiner and invisible operators, BOM /
# zero-width no-break space, Mongolian vowel separator, soft hyphen, direction marks, bidi embeddings and isolates.
_ALWAYS_DROP = frozenset(
    "\u200b\u2060\u2061\u2062\u2063\u2064\ufeff\u180e\u00ad\u200e\u200f"
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_EMOJI_TAIL = re.compile("[\ufe0e\ufe0f\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f\u20e3]")


def is_pictographic(ch: str) -> bool:
    """True for an Extended_Pictographic code point (emoji and pictographs, Unicode UTS #51)."""
    return bool(regex.match(r"\p{Extended_Pictographic}", ch))


def _keeps_joiner(text: str, i: int) -> bool:
    """Whether the ZWJ/ZWNJ at `text[i]` joins something: emoji ZWJ sequences, Indic conjuncts, Persian words."""
    j = i - 1
    while j >= 0 and _EMOJI_TAIL.match(text[j]):
        j -= 1
    prev = text[j] if j >= 0 else ""
    nxt = text[i + 1] if i + 1 < len(text) else ""
    if not prev or not nxt:
        return False
    if text[i] == ZWJ:
        if is_pictographic(prev) and is_pictographic(nxt):
            return True
        return unicodedata.combining(text[i - 1]) == 9  # after a virama: Indic half forms and chillus
    letters = all(unicodedata.category(c)[0] in "LM" and not c.isascii() for c in (text[i - 1], nxt))
    return letters  # ZWNJ between non-ASCII letters: Persian, Indic orthography


def remove_invisible(text: str) -> str:
    """Drop zero-width characters, BOMs and bidi controls; keep a ZWJ inside an emoji sequence (`👨\\u200d💻`) or
    after a virama, and a ZWNJ between non-ASCII letters; drop other control characters except newline and tab."""
    out = []
    for i, ch in enumerate(text):
        if ch in _ALWAYS_DROP:
            continue
        if ch in (ZWJ, ZWNJ) and not _keeps_joiner(text, i):
            continue
        if unicodedata.category(ch) == "Cc" and ch not in "\n\t\r":
            continue
        out.append(ch)
    return "".join(out)


_NEWLINES_RE = re.compile(r"\r\n|[\r\u2028\u2029\u0085]")
_HSPACE_RE = re.compile(r"[^\S\n]+")


def normalize_whitespace(text: str) -> str:
    """Unify line breaks to `\\n`, turn runs of other whitespace (tabs, no-break and ideographic spaces) into one
    space, strip each line, keep at most one empty line in a row, and strip the ends."""
    text = _NEWLINES_RE.sub("\n", text)
    lines = [_HSPACE_RE.sub(" ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def clean_comment_text(text: str) -> str:
    """A comment as clean text: NFC-normalised, invisible characters removed, whitespace normalised. Emoji are
    kept."""
    return normalize_whitespace(remove_invisible(unicodedata.normalize("NFC", text)))


def graphemes(text: str) -> list[str]:
    """Split `text` into user-perceived characters (extended grapheme clusters, Unicode UAX #29)."""
    return regex.findall(r"\X", text)


def truncate_graphemes(text: str, max_graphemes: int, ellipsis: str = "") -> str:
    """Cut `text` to at most `max_graphemes` grapheme clusters (the ellipsis included), never inside a cluster, so
    an emoji ZWJ sequence, flag or accented letter is kept whole or dropped whole. Trailing spaces are stripped."""
    if max_graphemes < 0:
        raise ValueError(f"max_graphemes must be >= 0, got {max_graphemes}")
    parts = graphemes(text)
    if len(parts) <= max_graphemes:
        return text
    keep = max(0, max_graphemes - len(graphemes(ellipsis)))
    return "".join(parts[:keep]).rstrip() + ellipsis


def dedupe_by_id(comments: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Keep the first comment of each `id` (a pinned comment also shows again in the list); the kept copy is marked
    pinned if any copy was. Comments without an id are all kept. Returns (comments, number of duplicates dropped)."""
    kept: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    dropped = 0
    for c in comments:
        cid = c.get("id")
        if cid is not None and str(cid) in by_id:
            first = by_id[str(cid)]
            first["is_pinned"] = bool(first.get("is_pinned") or c.get("is_pinned"))
            dropped += 1
            continue
        c = dict(c)
        kept.append(c)
        if cid is not None:
            by_id[str(cid)] = c
    return kept, dropped


_URL_RE = re.compile(
    r"(?:https?://|www\.)\S+"
    r"|\b[\w-]+(?:\.[\w-]+)*\.(?:com|net|org|ly|be|io|co|me|gg|tv|xyz|info|link|site|shop|app|to|ru|cc)\b(?:/\S*)?",
    re.IGNORECASE,
)
_TIMESTAMPS_ONLY_RE = re.compile(r"^(?:[\s,;|/.\-–—]*(?:\d{1,2}:)?\d{1,2}:\d{2}[\s,;|/.\-–—]*)+$")


def is_link_only(text: str) -> bool:
    """True when the comment holds at least one link and, apart from links, no letter or digit (spam)."""
    if not _URL_RE.search(text):
        return False
    return not re.search(r"\w", _URL_RE.sub(" ", text))


def is_timestamps_only(text: str) -> bool:
    """True when the comment is only a list of video timestamps (`0:45 1:30, 1:02:03`) and separators."""
    return bool(_TIMESTAMPS_ONLY_RE.match(text))


def comment_drop_reason(comment: Mapping[str, Any], text: str, drop_uploader: bool = True) -> str | None:
    """Why a comment is unusable as a training target, or None to keep it.

    `comment` is the collected dict (`author_is_uploader`, `parent`), `text` its cleaned text. Reasons, checked in
    this order: `reply` (parent is not `root`), `by_uploader`, `empty`, `link_only`, `timestamps_only`.
    """
    parent = comment.get("parent")
    if parent not in (None, "", "root"):
        return "reply"
    if drop_uploader and comment.get("author_is_uploader"):
        return "by_uploader"
    if not text or not any(not unicodedata.category(ch).startswith(("Z", "C")) for ch in text):
        return "empty"
    if is_link_only(text):
        return "link_only"
    if is_timestamps_only(text):
        return "timestamps_only"
    return None


def check_text(text: str, where: str) -> str:
    """`text` unchanged; VrpError naming `where` if it holds an unpaired UTF-16 surrogate (JSON's lone `"\\ud800"`
    escape, or a command-line argument that was not UTF-8): not a character, so no tokenizer or UTF-8 file takes it."""
    bad = re.search("[\ud800-\udfff]", text)
    if bad:
        raise VrpError(f"{where} holds an unpaired surrogate U+{ord(bad.group()):04X} at character {bad.start()}, "
                       f"which is not a character (a broken \\u escape in JSON, or text that is not UTF-8)")
    return text

