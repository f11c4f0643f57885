"""What YouTube's URLs, subtitle listings and errors look like: pure functions, no network, no library calls.

Knows: the URL forms that name a video, a channel or a playlist (`parse_target`); which subtitle track of a yt-dlp
info dict to use (`select_subtitle_track`: manual first, else the automatic track in the original language, json3
or vtt, never `live_chat`); and which errors raised by yt-dlp or youtube-transcript-api 1.x are permanent (private,
members-only, age-restricted, transcripts disabled, ...) or transient (HTTP 429, bot check, timeouts)
(`classify_error`). Error classes are matched by name along the exception's class hierarchy and cause chain, so
this module imports neither library.
Does not know: how to download anything (see `vrp.collect.fetch`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import parse_qs, urlsplit

from vrp.errors import VrpError

VIDEO_ID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")
_HANDLE_RE = re.compile(r"^@[\w.\-·]{3,30}$")
_PLAYLIST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{10,}$")
_YT_HOSTS = {"youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com", "youtube-nocookie.com",
             "www.youtube-nocookie.com"}
_SHORT_HOSTS = {"youtu.be", "www.youtu.be"}
_VIDEO_PATHS = {"shorts", "embed", "live", "v", "e"}
_CHANNEL_TABS = {"videos", "shorts", "streams"}
ACCEPTED_FORMS = (
    "accepted forms:\n"
    "  video:    https://www.youtube.com/watch?v=ID (other parameters such as &t= are ignored), https://youtu.be/ID,\n"
    "            https://www.youtube.com/shorts/ID, .../embed/ID, .../live/ID, the m.youtube.com host,\n"
    "            or a bare 11-character video ID\n"
    "  channel:  @handle, https://www.youtube.com/@handle[/videos|/shorts|/streams], .../channel/UC..., .../c/NAME,\n"
    "            .../user/NAME\n"
    "  playlist: https://www.youtube.com/playlist?list=ID"
)


def watch_url(video_id: str) -> str:
    """The canonical watch URL of a video id."""
    return f"https://www.youtube.com/watch?v={video_id}"


@dataclass(frozen=True)
class Target:
    """What the user asked for: kind `video` | `channel` | `playlist`, its id (video id, `@handle`, `UC...`,
    playlist id) and the URL handed to yt-dlp (channels: their `/videos` tab unless another tab was given)."""

    kind: str
    id: str
    url: str


def parse_target(text: str) -> Target:
    """Resolve a command-line argument to a `Target` without any network call. Raises VrpError listing the
    accepted forms (`ACCEPTED_FORMS`) for anything else, e.g. `https://example.com/watch?v=x`."""
    s = text.strip()
    if VIDEO_ID_RE.match(s):
        return Target("video", s, watch_url(s))
    if _HANDLE_RE.match(s):
        return Target("channel", s, f"https://www.youtube.com/{s}/videos")
    parts = urlsplit(s if "://" in s else "https://" + s)
    host = (parts.hostname or "").lower()
    segs = [p for p in parts.path.split("/") if p]
    query = parse_qs(parts.query)
    web = parts.scheme in ("http", "https")
    if web and host in _SHORT_HOSTS and segs and VIDEO_ID_RE.match(segs[0]):
        return Target("video", segs[0], watch_url(segs[0]))
    if web and host in _YT_HOSTS and segs:
        head = segs[0]
        v = (query.get("v") or [""])[0]
        if head == "watch" and VIDEO_ID_RE.match(v):
            return Target("video", v, watch_url(v))
        if head in _VIDEO_PATHS and len(segs) > 1 and VIDEO_ID_RE.match(segs[1]):
            return Target("video", segs[1], watch_url(segs[1]))
        plist = (query.get("list") or [""])[0]
        if head == "playlist" and _PLAYLIST_ID_RE.match(plist):
            return Target("playlist", plist, f"https://www.youtube.com/playlist?list={plist}")
        tab = segs[-1] if segs[-1] in _CHANNEL_TABS else "videos"
        if _HANDLE_RE.match(head) and (len(segs) == 1 or (len(segs) == 2 and segs[1] in _CHANNEL_TABS)):
            return Target("channel", head, f"https://www.youtube.com/{head}/{tab}")
        if head in ("channel", "c", "user") and (len(segs) == 2 or (len(segs) == 3 and segs[2] in _CHANNEL_TABS)):
            return Target("channel", segs[1], f"https://www.youtube.com/{head}/{segs[1]}/{tab}")
    raise VrpError(f"unsupported video, channel or playlist: {text!r}\n{ACCEPTED_FORMS}")


SUBTITLE_EXTS = ("json3", "vtt")


@dataclass(frozen=True)
class TrackChoice:
    """A subtitle track from a yt-dlp info dict: language key, source `manual` | `auto`, ext, URL."""

    language: str
    source: str
    ext: str
    url: str


def _pick_format(tracks: Any, original_only: bool) -> dict[str, Any] | None:
    usable = [t for t in tracks or [] if isinstance(t, dict) and t.get("url") and t.get("ext") in SUBTITLE_EXTS
              and not str(t.get("protocol") or "").startswith("youtube_live_chat")
              and not (original_only and "tlang" in parse_qs(urlsplit(t["url"]).query))]
    usable.sort(key=lambda t: SUBTITLE_EXTS.index(t["ext"]))
    return usable[0] if usable else None


def select_subtitle_track(info: dict[str, Any], languages: Sequence[str]) -> TrackChoice | None:
    """Choose the transcript track of a yt-dlp info dict: a manual track (`subtitles`) in the first requested
    language that has one (`en` also matches `en-GB`), else the automatic track (`automatic_captions`) in the
    video's original language — yt-dlp's `<lang>-orig` key, or `<lang>` when its URL has no `tlang` (machine
    translation) parameter. json3 is preferred to vtt. The `live_chat` entry is never chosen. None if no track."""
    manual = {k: v for k, v in (info.get("subtitles") or {}).items() if k != "live_chat"}
    auto = info.get("automatic_captions") or {}
    for lang in languages:
        keys = [k for k in manual if k == lang] + sorted(k for k in manual if k.startswith(lang + "-"))
        for key in keys:
            if fmt := _pick_format(manual[key], original_only=False):
                return TrackChoice(key, "manual", fmt["ext"], fmt["url"])
    for lang in languages:
        for key in (f"{lang}-orig", lang):
            if fmt := _pick_format(auto.get(key), original_only=True):
                return TrackChoice(key.removesuffix("-orig"), "auto", fmt["ext"], fmt["url"])
    return None


@dataclass(frozen=True)
class Failure:
    """Why a video could not be collected. permanent: never retried, not even by a later run. retry: retried now
    with backoff (transient). attempts: how many tries were made."""

    reason: str
    permanent: bool
    retry: bool
    detail: str
    attempts: int = 1


# youtube-transcript-api 1.x exception class -> (reason, permanent, retry); subclasses before their bases.
_API_ERRORS = {
    "AgeRestricted": ("age_restricted", True, False),
    "IpBlocked": ("blocked", False, True),
    "RequestBlocked": ("blocked", False, True),
    "TranscriptsDisabled": ("transcripts_disabled", True, False),
    "NoTranscriptFound": ("no_transcript_in_language", True, False),
    "InvalidVideoId": ("invalid_video_id", True, False),
    "VideoUnavailable": ("unavailable", True, False),
    "YouTubeRequestFailed": ("network", False, True),
    "PoTokenRequired": ("po_token_required", False, False),
}
# Messages of yt-dlp (and VideoUnplayable reasons), first match wins: transient ones first.
_MESSAGES = [
    (r"\b429\b|too many requests|rate.?limit|try again later", "rate_limited", False, True),
    (r"not a bot|captcha|unusual traffic", "blocked", False, True),
    (r"timed? ?out|connection (?:reset|refused|aborted)|temporary failure|network is unreachable"
     r"|remote end closed|incomplete ?read|http error 5\d\d", "network", False, True),
    (r"private video|video is private", "private", True, False),
    (r"members[- ]only|join this channel|channel's members", "members_only", True, False),
    (r"confirm your age|age[- ]restricted|inappropriate for some users", "age_restricted", True, False),
    (r"premieres? in|live event will begin|not currently live", "live_or_upcoming", True, False),
    (r"comments are (?:turned off|disabled)", "comments_disabled", True, False),
    (r"not available in your country|geo.?restrict", "geo_restricted", True, False),
    (r"video unavailable|no longer available|has been removed|been terminated|does not exist|http error 404",
     "unavailable", True, False),
]
_NETWORK_TYPES = {"TimeoutError", "ConnectionError", "TransportError", "IncompleteRead", "SSLError"}


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes: `__cause__`, `__context__`, yt-dlp's `DownloadError.exc_info` and
    `ExtractorError.cause`."""
    out: list[BaseException] = []
    todo = [exc]
    while todo and len(out) < 10:
        e = todo.pop(0)
        if e is None or any(e is o for o in out):
            continue
        out.append(e)
        exc_info = getattr(e, "exc_info", None)
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None) if isinstance(getattr(e, "cause", None),
                 BaseException) else None, exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None]
    return out


def classify_error(exc: BaseException) -> Failure:
    """Classify an error from yt-dlp or youtube-transcript-api into a `Failure` reason, e.g. `private`,
    `members_only`, `age_restricted`, `unavailable`, `comments_disabled`, `transcripts_disabled`,
    `no_transcript_in_language`, `invalid_video_id` (a URL passed where an id was expected): permanent;
    `rate_limited` (HTTP 429), `blocked` (IP block, bot check), `network` (timeouts, 5xx): transient, retried.
    Anything else is `error`: not retried now, retried by a later run."""
    chain = _chain(exc)
    detail = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__).strip()[:300]
    for e in chain:
        for cls in type(e).__mro__:
            if cls.__name__ in _API_ERRORS:
                reason, permanent, retry = _API_ERRORS[cls.__name__]
                if reason == "invalid_video_id":
                    detail = f"a URL was passed where a video id was expected: {getattr(e, 'video_id', '')}"
                return Failure(reason, permanent, retry, detail or reason)
    text = " ".join(f"{getattr(e, 'reason', '') or ''} {e}" for e in chain).lower()
    for e in chain:
        status = getattr(e, "status", None) or getattr(getattr(e, "response", None), "status", None)
        if status == 429:
            return Failure("rate_limited", False, True, detail)
        if isinstance(status, int) and 500 <= status < 600:
            return Failure("network", False, True, detail)
    for pattern, reason, permanent, retry in _MESSAGES:
        if re.search(pattern, text):
            return Failure(reason, permanent, retry, detail)
    if any(cls.__name__ in _NETWORK_TYPES for e in chain for cls in type(e).__mro__):
        return Failure("network", False, True, detail)
    return Failure("error", False, False, f"{type(exc).__name__}: {detail}")
