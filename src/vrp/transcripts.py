"""Caption files to timed segments and clean transcript text.

Knows: the caption formats YouTube viewers and yt-dlp deal in — WebVTT (`.vtt`, parsed with webvtt-py), SubRip
(`.srt`, webvtt-py), YouTube Studio's SubViewer export (`.sbv`, webvtt-py), YouTube's timed-text JSON (`.json3`:
`{"events": [{"tStartMs", "dDurationMs", "segs": [{"utf8"}]}]}`), the youtube-transcript-api JSON (`[{"text",
"start", "duration"}]`, as `FetchedTranscript.to_raw_data()` gives), our own segment JSON (`[{"start", "end",
"text"}]`) and plain `.txt` — and turns any of them into `Segment`s whose text is clean (markup tags and ASS/SSA
override blocks stripped, entities decoded, invisible characters removed, rolling-caption repeats removed).
`segments_to_text` joins them into the transcript a `Video` record carries. Bytes are decoded by `vrp.charsets`
(every UTF BOM, UTF-8, else a guessed encoding that is reported).
Checked in webvtt-py 0.6.0: it keeps cue settings (`align:start position:0%`) apart from the text; it needs the
SRT cue number, the SBV timing line and the `WEBVTT` header at the very start of a line, so whitespace and
invisible format characters (a left-to-right mark, a second BOM) around each line, and blank lines before the
first block, are stripped here (`tidy_caption_lines`). Cue text is read raw (`Caption.raw_text`), because inline
timing tags are the evidence of rolling captions, then cleaned by `clean.clean_caption_line`.
Does not know: how captions are downloaded (see `vrp.collect.fetch`) or comments (see `vrp.clean`,
`vrp.collected`). SubViewer 1/2 `.sub` files (centisecond times, `[br]` breaks) are not read (webvtt-py's
`sbv` reader needs milliseconds).
"""
from __future__ import annotations

import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from vrp import clean
from vrp.charsets import decode_bytes
from vrp.errors import VrpError
from vrp.files import loads_json

SUPPORTED_SUFFIXES = (".vtt", ".srt", ".sbv", ".json3", ".json", ".txt")


@dataclass(frozen=True)
class Segment:
    """A timed piece of transcript. start/end: seconds from the start of the video; text: clean, one line."""

    start: float
    end: float
    text: str

    def to_json(self) -> dict[str, Any]:
        """Return `{"start", "end", "text"}` with times rounded to milliseconds."""
        return {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text}

    @classmethod
    def from_json(cls, d: Any, where: str = "") -> "Segment":
        """Build from `{"start", "end", "text"}` (times optional, default 0). Raises VrpError naming `where`."""
        if not isinstance(d, dict) or not isinstance(d.get("text"), str):
            raise VrpError(f"{where}: expected a segment object with a string 'text', got {_brief(d)}")
        try:
            start = _seconds(d.get("start") or 0.0)
            end = _seconds(d.get("end") if d.get("end") is not None else start)
        except (TypeError, ValueError):
            raise VrpError(f"{where}: 'start'/'end' must be numbers (seconds), got {_brief(d)}") from None
        return cls(start, end, clean.clean_caption_line(clean.check_text(d["text"], f"{where}: 'text'")))



def _seconds(value: Any) -> float:
    """A time value as a float; ValueError unless it is a finite number (NaN or infinity would make the segment
    JSON invalid), TypeError for a non-number."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a time")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {value!r}")
    return x



def _brief(obj: Any, limit: int = 80) -> str:
    text = json.dumps(obj, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."




def _segments_from_cues(cues: Sequence[tuple[float, float, str]]) -> list[Segment]:
    """Segments from (start s, end s, raw cue text with tags) in file order, rolling-caption repeats removed. A cue
    of zero duration (start == end) is dropped first: no player shows it (WebVTT and SubRip display a cue from its
    start to its end), and tools use such cues for hidden notes; webvtt-py keeps them."""
    cues = [c for c in cues if c[1] != c[0]]
    rolling = clean.is_rolling_captions([raw for _, _, raw in cues], [end - start for start, end, _ in cues])
    lines = [[ln for ln in (clean.clean_caption_line(x) for x in raw.split("\n")) if ln] for _, _, raw in cues]
    if rolling:
        lines = clean.remove_rolling_repeats(lines)
    return [Segment(start, end, " ".join(ls)) for (start, end, _), ls in zip(cues, lines) if ls]


_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")  # the WebVTT/SubRip line terminators; U+2028 is not one
_LEADING_BLANK_LINES_RE = re.compile(r"\A(?:[^\S\n]*\n)+")


def tidy_caption_lines(text: str) -> str:
    """Caption file text with whitespace and invisible format characters (category Cf: a left-to-right mark, a
    stray BOM from concatenated files, a zero-width space) stripped from both ends of every line with visible text
    (`clean.strip_format_chars`), and blank lines before the first block removed, so that cue numbers, timing
    lines and the `WEBVTT` header are recognised."""
    lines = (clean.strip_format_chars(ln) for ln in _LINE_BREAK_RE.split(text))
    return _LEADING_BLANK_LINES_RE.sub("", "\n".join(lines))


# Timestamps as webvtt-py 0.6.0 accepts them (vtt.py, srt.py, sbv.py), and timing lines made of them. Minutes and
# seconds above 59 and an end before the start are checked in `_timing_ms`.
_VTT_TS = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})\.(\d{1,3})"
_SRT_TS = r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})"
_SBV_TS = r"(\d+):(\d{1,2}):(\d{1,2})\.(\d{3})"
_TIMING_RE = {
    # ASCII digits only (`\d` would take full-width ones, which webvtt-py reads otherwise)
    "vtt": re.compile(rf"{_VTT_TS}[ \t]*-->[ \t]*{_VTT_TS}(?:[ \t]+.*)?", re.ASCII),  # cue settings may follow
    "srt": re.compile(rf"{_SRT_TS}[ \t]*-->[ \t]*{_SRT_TS}(?:[ \t]+.*)?", re.ASCII),  # SRT editors' X1:.. Y1:..
    "sbv": re.compile(rf"{_SBV_TS},{_SBV_TS}", re.ASCII),
}
# A line meant as a timing line: an arrow (`-->`, or a mistyped `->` / `=>` / `→` next to a time), or two times.
_TIMING_ATTEMPT_RE = re.compile(r"-->|\d:\d{1,2}\S*\s*(?:-+>|=+>|→)|(?:-+>|=+>|→)\s*-?\d+:\d"
                                r"|^\s*-?\d+:\d{1,2}:\d{1,2}[.,]\d+\s*\S{0,3}\s*-?\d+:\d{1,2}:\d{1,2}")
_VTT_NON_CUE_BLOCKS = ("WEBVTT", "NOTE", "STYLE", "REGION")
MAX_HOUR_DIGITS = 5  # 99,999 hours; webvtt-py drops a cue whose hour field is too large for it, silently


def _timing_ms(groups: Sequence[str | None]) -> tuple[int, int] | str:
    """(start ms, end ms) of the 8 regex groups of a timing line (hours may be None), or why it is invalid."""
    times = []
    for h, m, sec, frac in (groups[:4], groups[4:]):
        if h is not None and len(h) > MAX_HOUR_DIGITS:
            return f"hours must have at most {MAX_HOUR_DIGITS} digits"
        if int(m) > 59 or int(sec) > 59:
            return "minutes and seconds must be 00-59"
        times.append(((int(h or 0) * 60 + int(m)) * 60 + int(sec)) * 1000 + int(str(frac).ljust(3, "0")))
    if times[1] < times[0]:
        return "the cue ends before it starts"
    return times[0], times[1]


def check_timing_lines(text: str, fmt: str, where: str) -> None:
    """Check every timing line of caption `text` in format `fmt` (`vtt`, `srt`, `sbv`); webvtt-py skips a cue with a
    malformed timing line, or reads it as text of the cue before, so text would be lost or mixed with timings.

    A line meant as a timing line (it holds `-->`, a mistyped arrow such as `->` next to a time, or two times) must
    be a valid one; a valid one must have minutes and seconds 00-59 and end no earlier than it starts. Every block
    (lines between blank lines) of an SBV file starts with a timing line, and every WebVTT block but the header,
    NOTE, STYLE and REGION blocks has one as its first or second line (else its text is outside any cue). An SRT
    block without one continues the cue before (webvtt-py joins it; a blank line inside cue text is common).
    Raises VrpError naming `where`, the line number (1 = first line of the file) and the bad line."""
    pattern = _TIMING_RE[fmt]
    lines = [clean.strip_format_chars(ln) for ln in _LINE_BREAK_RE.split(text)]

    def bad(lineno: int, why: str) -> VrpError:
        shown = lines[lineno - 1].strip()
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return VrpError(f"{where}:{lineno}: {why}: {shown!r}")

    block_start = True
    block: list[int] = []  # line numbers of the current block
    for lineno, line in enumerate(lines + [""], 1):
        if (not line) if fmt == "vtt" else (not line.strip()):  # WebVTT: a line of spaces is cue text (YouTube)
            if block:
                first = lines[block[0] - 1].strip()
                heads = [lines[n - 1] for n in block[:2]]
                if fmt == "sbv" and not pattern.fullmatch(first):
                    raise bad(block[0], "expected an SBV timing line such as 0:00:01.000,0:00:03.000")
                if (fmt == "vtt" and not first.startswith(_VTT_NON_CUE_BLOCKS)
                        and not any("-->" in h for h in heads)):
                    raise bad(block[0], "text outside any cue (a block without a timing line such as "
                                        "00:00:01.000 --> 00:00:03.000)")
            block, block_start = [], True
            continue
        block.append(lineno)
        stripped = line.strip()
        if fmt == "vtt" and block_start and stripped.startswith(_VTT_NON_CUE_BLOCKS):
            block_start = False
            continue
        block_start = False
        if len(block) > 1 and fmt == "vtt" and lines[block[0] - 1].strip().startswith(_VTT_NON_CUE_BLOCKS):
            continue  # inside the header, a NOTE, STYLE or REGION block
        m = pattern.fullmatch(stripped)
        if m is None:
            if _TIMING_ATTEMPT_RE.search(stripped) and not (fmt == "sbv" and len(block) > 1):
                raise bad(lineno, "malformed timing line")
            continue
        timing = _timing_ms(m.groups())
        if isinstance(timing, str):
            raise bad(lineno, f"invalid timing ({timing})")


def _parse_cues(text: str, fmt: str, where: str, expected: str) -> list[Segment]:
    """Cues of `text` in webvtt-py's format `fmt` (`vtt`, `srt`, `sbv`) as segments, after `check_timing_lines`;
    VrpError naming `where`."""
    import webvtt
    from webvtt.errors import MalformedCaptionError, MalformedFileError

    if fmt != "vtt" or tidy_caption_lines(text).startswith("WEBVTT"):  # not WebVTT at all: the error below says so
        check_timing_lines(text, fmt, where)
    tidy = tidy_caption_lines(text)
    if fmt == "srt":
        tidy = number_srt_cues(tidy)
    try:
        captions = webvtt.WebVTT.from_buffer(io.StringIO(tidy), format=fmt).captions
    except (MalformedFileError, MalformedCaptionError) as e:
        raise VrpError(f"{where}: not a valid {expected} ({e})") from None
    return _segments_from_cues(
        [(c.start_time.in_milliseconds() / 1000, c.end_time.in_milliseconds() / 1000, c.raw_text) for c in captions])


def number_srt_cues(text: str) -> str:
    """SubRip text in which every cue has its number: a timing line (`00:00:01,000 --> 00:00:02,000`) that starts a
    block, or follows a line of text without a cue number, gets one, as pysrt reads such files (its cue index is
    optional) and players show them. webvtt-py needs the number: it refuses a file that starts with a timing line,
    and drops a later cue without one. `text` has gone through `tidy_caption_lines`; existing numbers are kept."""
    lines = text.split("\n")
    out: list[str] = []
    count = 0
    for i, line in enumerate(lines):
        if _TIMING_RE["srt"].fullmatch(line.strip()):
            prev = lines[i - 1].strip() if i else ""
            numbered = prev.isdigit() and (i < 2 or not lines[i - 2].strip())
            if not numbered:
                count += 1
                out.append(str(count))
        out.append(line)
    return "\n".join(out)


def parse_vtt(text: str, where: str = "<vtt>") -> list[Segment]:
    """Parse WebVTT text (YouTube manual or rolling automatic captions). Raises VrpError if it is not WebVTT."""
    return _parse_cues(text, "vtt", where, "WebVTT file; it must start with 'WEBVTT'")


def parse_srt(text: str, where: str = "<srt>") -> list[Segment]:
    """Parse SubRip text (BOMs, format characters and blank lines before the first cue are allowed; cue numbers are
    optional, `number_srt_cues`). Raises VrpError if it is not SRT."""
    return _parse_cues(text, "srt", where, "SubRip (.srt) file; it must start with a cue number or a timing line "
                                           "such as 00:00:01,000 --> 00:00:03,000")


def parse_sbv(text: str, where: str = "<sbv>") -> list[Segment]:
    """Parse YouTube's SubViewer text (`.sbv`, what YouTube Studio exports): blocks of a timing line
    `0:00:01.000,0:00:03.000` (H:MM:SS.mmm) and the caption text, separated by blank lines (webvtt-py's `sbv`
    reader). Raises VrpError if it is not SBV."""
    return _parse_cues(text, "sbv", where, "SubViewer (.sbv) file; it must start with a timing line such as "
                                           "0:00:01.000,0:00:03.000")


def parse_json3(obj: Any, where: str = "<json3>") -> list[Segment]:
    """Parse YouTube timed-text JSON (`fmt=json3`): one segment per event with text; line-break-only append events and
    events shown for no time (`dDurationMs` 0, a hidden cue) are skipped. Times come from `tStartMs` and
    `dDurationMs` (milliseconds). Raises VrpError naming `where` and the event for `segs` that is not a list of
    objects, a `utf8` that is not a string (`5`), or a time that is not a finite number >= 0 (`"1000"`, `true`,
    `-5`)."""
    events = obj.get("events") if isinstance(obj, dict) else None
    if not isinstance(events, list):
        raise VrpError(f"{where}: not YouTube json3 captions (expected an object with an 'events' list)")
    segments = []
    for i, ev in enumerate(events):
        if not isinstance(ev, dict) or not ev.get("segs"):
            continue
        segs = ev["segs"]
        if not isinstance(segs, list) or not all(isinstance(x, dict) for x in segs):
            raise VrpError(f"{where}: events[{i}].segs must be a list of {{'utf8': text}} objects: {_brief(ev)}")
        for j, seg in enumerate(segs):
            if not isinstance(seg.get("utf8", ""), str):
                raise VrpError(f"{where}: events[{i}].segs[{j}].utf8 must be text, got {_brief(seg.get('utf8'))}")
        for key in ("tStartMs", "dDurationMs"):
            value = ev.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise VrpError(f"{where}: events[{i}].{key} must be a number of milliseconds >= 0, got "
                               f"{_brief(value)}")
        if "dDurationMs" in ev and ev["dDurationMs"] == 0:  # shown for no time (an absent duration is unknown)
            continue
        text = "".join(seg.get("utf8", "") for seg in segs)
        start = ev.get("tStartMs", 0) / 1000
        end = start + ev.get("dDurationMs", 0) / 1000
        text = clean.clean_caption_line(clean.check_text(text, f"{where}: events[{i}].segs"))
        if text:
            segments.append(Segment(start, end, text))
    return segments


def parse_transcript_api(snippets: Iterable[Any], where: str = "<transcript-api>") -> list[Segment]:
    """Segments from youtube-transcript-api snippets: dicts `{"text", "start", "duration"}` (seconds) or objects
    with those attributes (`FetchedTranscriptSnippet`). A snippet with `duration` 0 is shown for no time and is
    skipped, as zero-duration cues of the other caption formats are (an absent duration is unknown: kept)."""
    segments = []
    for i, s in enumerate(snippets):
        get = s.get if isinstance(s, dict) else lambda k, _s=s: getattr(_s, k, None)
        text, start, duration = get("text"), get("start"), get("duration")
        if not isinstance(text, str):
            raise VrpError(f"{where}[{i}]: expected a snippet with a string 'text', got {_brief(s)}")
        try:
            start_s = _seconds(start or 0.0)
            end_s = start_s + _seconds(duration or 0.0)
        except (TypeError, ValueError):
            raise VrpError(f"{where}[{i}]: 'start'/'duration' must be numbers (seconds), got {_brief(s)}") from None
        text = clean.clean_caption_line(clean.check_text(text, f"{where}[{i}]: 'text'"))
        if text and not (duration is not None and end_s == start_s):
            segments.append(Segment(start_s, end_s, text))
    return segments


def parse_json_transcript(obj: Any, where: str = "<json>") -> list[Segment]:
    """Parse any JSON transcript: json3 (`events`), transcript-api (`[{"text", "start", "duration"}]`,
    `{"snippets": [...]}`, or the `youtube_transcript_api --format json` output `[[...]]` for one video), or
    segments (`[{"start", "end", "text"}]` or `{"segments": [...]}`)."""
    if isinstance(obj, dict) and "events" in obj:
        return parse_json3(obj, where)
    if isinstance(obj, list) and obj and all(isinstance(x, list) for x in obj):  # youtube_transcript_api CLI
        if len(obj) != 1:
            raise VrpError(f"{where}: holds {len(obj)} transcripts (one list per video); pass a file with one")
        obj = obj[0]
    if isinstance(obj, dict):
        for key in ("snippets", "segments", "transcript"):
            if isinstance(obj.get(key), list):
                obj = obj[key]
                break
    if not isinstance(obj, list):
        raise VrpError(f"{where}: unknown JSON transcript; expected json3 {{'events': [...]}}, "
                       f"transcript-api [{{'text', 'start', 'duration'}}] or [{{'start', 'end', 'text'}}]")
    if any(isinstance(d, dict) and "duration" in d for d in obj):
        return parse_transcript_api(obj, where)
    segments = [Segment.from_json(d, f"{where}[{i}]") for i, d in enumerate(obj)]
    return [s for s in segments if s.text]


def parse_transcript_bytes(data: bytes, filename: str, notes: list[str] | None = None) -> list[Segment]:
    """Parse an uploaded or downloaded caption file; the format comes from `filename`'s suffix: `.vtt`, `.srt`,
    `.sbv`, `.json3`, `.json` (json3 or transcript-api, sniffed), `.txt` (plain text, one segment at 0 s).

    The bytes are decoded by `vrp.charsets.decode_bytes`: a UTF-8/16/32 byte-order mark decides, else UTF-8, else
    a guessed encoding, whose note (naming `filename` and the encoding) is logged and appended to `notes` when
    given. Raises VrpError naming `filename` on an unsupported suffix, undecodable bytes, or malformed content."""
    suffix = os.path.splitext(filename)[1].lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise VrpError(f"{filename}: unsupported transcript file type {suffix or '(none)'!r}; "
                       f"expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    decoded = decode_bytes(data, filename)
    if decoded.note and notes is not None:
        notes.append(decoded.note)
    text = decoded.text
    if suffix == ".vtt":
        return parse_vtt(text, filename)
    if suffix == ".srt":
        return parse_srt(text, filename)
    if suffix == ".sbv":
        return parse_sbv(text, filename)
    if suffix == ".txt":
        body = clean.collapse_spaces(clean.remove_invisible(text))
        return [Segment(0.0, 0.0, body)] if body else []
    obj = loads_json(clean.strip_format_chars(text), filename)
    try:
        return parse_json_transcript(obj, filename)
    except RecursionError:  # a deeply nested value that the decoder took but a later walk (repr, dumps) did not
        raise VrpError(f"{filename}: invalid transcript JSON (nested too deeply to read)") from None


def read_transcript(path: str | os.PathLike[str], notes: list[str] | None = None) -> list[Segment]:
    """Read a `.vtt`, `.srt`, `.sbv`, `.json3`, `.json` or `.txt` transcript file into segments (see
    `parse_transcript_bytes`, which also says what goes to `notes`). Raises VrpError if the file is missing or
    malformed."""
    path = Path(path)
    if path.is_dir():
        raise VrpError(f"{path}: is a directory, not a caption file")
    if not path.is_file():
        raise VrpError(f"{path}: file not found")
    return parse_transcript_bytes(path.read_bytes(), str(path), notes)


def segments_to_text(segments: Iterable[Segment], drop_annotations: bool = True) -> str:
    """The transcript as one line of clean text: segment texts joined with single spaces; `[Music]`-style
    annotations removed unless `drop_annotations` is False."""
    texts = [s.text for s in segments]
    if drop_annotations:
        texts = [clean.remove_annotations(t) for t in texts]
    return clean.join_segments(texts)
