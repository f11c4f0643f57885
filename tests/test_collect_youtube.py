"""`vrp.collect.youtube` offline: URL forms, subtitle track choice and the classification of library errors."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from yt_dlp.utils import DownloadError, ExtractorError

from vrp.collect.youtube import ACCEPTED_FORMS, Failure, classify_error, parse_target, select_subtitle_track
from vrp.errors import VrpError

FIX = Path(__file__).parent / "fixtures" / "collect"
INFO = json.loads((FIX / "ytdlp_info.json").read_text(encoding="utf-8"))
JSON3_URL = next(t["url"] for t in INFO["automatic_captions"]["en-orig"] if t["ext"] == "json3")
PLAYLIST = "https://www.youtube.com/playlist?list=PLabcdefghij123"


@pytest.mark.parametrize("url", [
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ", "https://youtu.be/dQw4w9WgXcQ?si=AbCdEfGh12345",
    "https://www.youtube.com/shorts/dQw4w9WgXcQ", "https://www.youtube.com/embed/dQw4w9WgXcQ",
    "https://www.youtube.com/live/dQw4w9WgXcQ?feature=share", "https://m.youtube.com/watch?v=dQw4w9WgXcQ",
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=42s&list=PLx", "youtube.com/watch?feature=x&v=dQw4w9WgXcQ",
    "dQw4w9WgXcQ", "  http://www.youtube-nocookie.com/embed/dQw4w9WgXcQ  ",
])
def test_video_url_forms_resolve_to_the_same_id(url):
    t = parse_target(url)
    assert (t.kind, t.id, t.url) == ("video", "dQw4w9WgXcQ", "https://www.youtube.com/watch?v=dQw4w9WgXcQ")


@pytest.mark.parametrize("url, kind, ident, canonical", [
    ("@captionlab", "channel", "@captionlab", "https://www.youtube.com/@captionlab/videos"),
    ("https://www.youtube.com/@captionlab/videos", "channel", "@captionlab",
     "https://www.youtube.com/@captionlab/videos"),
    ("https://www.youtube.com/@captionlab/shorts", "channel", "@captionlab",
     "https://www.youtube.com/@captionlab/shorts"),
    ("https://youtube.com/channel/UCabcdefghijklmnopqrstuv", "channel", "UCabcdefghijklmnopqrstuv",
     "https://www.youtube.com/channel/UCabcdefghijklmnopqrstuv/videos"),
    (PLAYLIST, "playlist", "PLabcdefghij123", PLAYLIST),
])
def test_channel_and_playlist_forms(url, kind, ident, canonical):
    t = parse_target(url)
    assert (t.kind, t.id, t.url) == (kind, ident, canonical)


@pytest.mark.parametrize("bad", ["https://example.com/watch?v=x", "https://example.com/watch?v=dQw4w9WgXcQ",
                                 "https://www.youtube.com/watch?v=short", "dQw4w9WgXc", "ftp://youtu.be/dQw4w9WgXcQ",
                                 "https://www.youtube.com/@captionlab/community", "hello world", ""])
def test_unsupported_strings_are_rejected_with_the_accepted_forms(bad):
    want = f"unsupported video, channel or playlist: {bad!r}\n{ACCEPTED_FORMS}"
    with pytest.raises(VrpError, match=f"^{re.escape(want)}$"):
        parse_target(bad)


def test_live_chat_entry_is_never_selected():
    track = select_subtitle_track(INFO, ["en"])
    assert (track.language, track.source, track.ext, track.url) == ("en", "auto", "json3", JSON3_URL)
    only_chat = {"subtitles": INFO["subtitles"], "automatic_captions": {}}
    assert select_subtitle_track(only_chat, ["en"]) is None
    chat_as_lang = {"subtitles": {"live_chat": INFO["subtitles"]["live_chat"],
                                  "en": [{"ext": "json", "url": "https://x/chat", "protocol": "youtube_live_chat"}]}}
    assert select_subtitle_track(chat_as_lang, ["en"]) is None


def test_manual_track_preferred_and_translations_refused():
    info = {**INFO, "subtitles": {**INFO["subtitles"], "en-GB": [
        {"ext": "srv1", "url": "https://x/srv1"}, {"ext": "vtt", "url": "https://x/en-GB.vtt"}]}}
    track = select_subtitle_track(info, ["en"])
    assert (track.language, track.source, track.ext) == ("en-GB", "manual", "vtt")
    assert select_subtitle_track(INFO, ["de"]) is None  # "de" is a machine translation (tlang=de) of English
    no_orig = {"automatic_captions": {"en": INFO["automatic_captions"]["en"]}}
    assert select_subtitle_track(no_orig, ["en"]).source == "auto"


@pytest.mark.parametrize("message, reason, permanent, retry", [
    ("ERROR: [youtube] x: Private video. Sign in if you've been granted access to this video", "private", True, False),
    ("ERROR: [youtube] x: Join this channel to get access to members-only content like this video, and other "
     "exclusive perks.", "members_only", True, False),
    ("ERROR: [youtube] x: Sign in to confirm your age. This video may be inappropriate for some users.",
     "age_restricted", True, False),
    ("ERROR: [youtube] x: Sign in to confirm you’re not a bot. Use --cookies", "blocked", False, True),
    ("ERROR: [youtube] x: Video unavailable. This video has been removed by the uploader", "unavailable", True, False),
    ("ERROR: [youtube] x: This live event will begin in 3 hours.", "live_or_upcoming", True, False),
    ("ERROR: Unable to download API page: <urlopen error timed out>", "network", False, True),
    ("ERROR: something new", "error", False, False),
])
def test_yt_dlp_errors_are_classified(message, reason, permanent, retry):
    f = classify_error(DownloadError(message))
    assert (f.reason, f.permanent, f.retry) == (reason, permanent, retry)


def test_http_429_in_the_cause_chain_is_transient():
    from yt_dlp.networking.common import Response
    from yt_dlp.networking.exceptions import HTTPError

    http = HTTPError(Response(io.BytesIO(b""), "https://www.youtube.com/youtubei/v1/next", {}, status=429,
                              reason="Too Many Requests"))
    err = ExtractorError("Unable to download API page", cause=http)
    f = classify_error(DownloadError(f"ERROR: {err.orig_msg}", exc_info=(type(err), err, None)))
    assert (f.reason, f.retry, f.permanent) == ("rate_limited", True, False)
    assert classify_error(TimeoutError("read")).reason == "network"


def test_failure_record_shape():
    assert Failure("private", True, False, "x").attempts == 1
