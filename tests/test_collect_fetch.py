"""`vrp collect` offline: yt-dlp options, records, transcript fallback, skips, resume and backoff.

yt-dlp and youtube-transcript-api are replaced at their boundary: `FakeYDL` (the `YoutubeDL` factory: params ->
context manager with `extract_info` and `urlopen`) serves recorded-format info dicts and caption files;
`FakeTranscriptApi` returns real `FetchedTranscript` objects or raises the library's real exception classes.
"""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
import youtube_transcript_api as yta
from yt_dlp.utils import DownloadError

from vrp.cli import main
from vrp.collect.config import CollectConfig
from vrp.collect.fetch import collect, listing_params, video_params
from vrp.collect.youtube import watch_url
from vrp.collected import load_collect_dir
from vrp.errors import ConfigError, VrpError

FIX = Path(__file__).parent / "fixtures" / "collect"
INFO = json.loads((FIX / "ytdlp_info.json").read_text(encoding="utf-8"))
VID = INFO["id"]
JSON3_URL = next(t["url"] for t in INFO["automatic_captions"]["en-orig"] if t["ext"] == "json3")
PLAYLIST = "https://www.youtube.com/playlist?list=PLabcdefghij123"
IDS = ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc"]


def make_info(video_id: str, **changes: Any) -> dict[str, Any]:
    info = copy.deepcopy(INFO)
    info.update(id=video_id, webpage_url=watch_url(video_id), title=f"video {video_id}")
    for k, v in changes.items():
        if v is None:
            info.pop(k, None)
        else:
            info[k] = v
    return info


class World:
    """What the fake YouTube answers: per URL a list of outcomes (dict = info, exception = raised), the last one
    repeating; caption files by URL. Records every call."""

    def __init__(self, pages: dict[str, Any], files: dict[str, bytes] | None = None):
        self.pages = {u: (v if isinstance(v, list) else [v]) for u, v in pages.items()}
        self.files = files if files is not None else {JSON3_URL: (FIX / "captions.en.json3").read_bytes()}
        self.calls: list[str] = []
        self.params: list[dict[str, Any]] = []

    def factory(self, params: dict[str, Any]) -> "FakeYDL":
        self.params.append(params)
        return FakeYDL(self, params)


class FakeYDL:
    def __init__(self, world: World, params: dict[str, Any]):
        self.world, self.params = world, params

    def __enter__(self) -> "FakeYDL":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def extract_info(self, url: str, download: bool = True) -> dict[str, Any]:
        assert download is False
        self.world.calls.append(url)
        outcomes = self.world.pages[url]
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return copy.deepcopy(outcome)

    def urlopen(self, url: str) -> io.BytesIO:
        self.world.calls.append(url)
        return io.BytesIO(self.world.files[url])


class FakeTranscriptApi:
    """`YouTubeTranscriptApi` stand-in; with no outcome, being called fails the test."""

    def __init__(self, outcome: Any = None):
        self.outcome, self.calls = outcome, []

    def fetch(self, video_id: str, languages: Any = ("en",)) -> Any:
        self.calls.append((video_id, list(languages)))
        if self.outcome is None:
            pytest.fail("youtube-transcript-api must not be called here")
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (BaseException: not classified as a network error)."""
    import socket

    def refuse(*args: Any, **kwargs: Any) -> None:
        pytest.fail("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def fetched(is_generated: bool) -> yta.FetchedTranscript:
    snippets = [yta.FetchedTranscriptSnippet(text="hi &amp; welcome", start=0.5, duration=1.5),
                yta.FetchedTranscriptSnippet(text="[Music]", start=2.0, duration=3.0)]
    return yta.FetchedTranscript(snippets=snippets, video_id=VID, language="English", language_code="en",
                                 is_generated=is_generated)


def config(**kw: Any) -> CollectConfig:
    return CollectConfig(progress=False, **kw)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_bad_target_is_rejected_before_any_network_call(tmp_path):
    world = World({})
    with pytest.raises(VrpError, match="unsupported"):
        collect([VID, "https://example.com/watch?v=x"], tmp_path / "out", config(), ydl_factory=world.factory,
                transcript_api=FakeTranscriptApi(), sleep=lambda s: None)
    assert world.params == [] and world.calls == [] and not (tmp_path / "out").exists()
    assert main(["collect", "https://example.com/watch?v=x", "--out", str(tmp_path / "cli")]) == 2
    assert not (tmp_path / "cli").exists()


# --- yt-dlp options -------------------------------------------------------------------------------------------

def test_default_config_asks_yt_dlp_for_top_comments(tmp_path):
    params = video_params(CollectConfig())
    assert params["extractor_args"] == {"youtube": {"comment_sort": ["top"], "max_comments": ["20", "20", "0", "0",
                                                                                               "1"]}}
    assert params["getcomments"] is True and params["skip_download"] is True
    with pytest.raises(ConfigError, match="comment_sort: choose from top, new, got ''"):
        CollectConfig(comment_sort="")
    # The installed yt-dlp's YouTube extractor reads these arguments as intended (no network: only the options).
    from yt_dlp import YoutubeDL

    with YoutubeDL(video_params(CollectConfig(comments_per_video=7))) as ydl:
        ie = ydl.get_info_extractor("Youtube")
        assert ie._configuration_arg("comment_sort", [""])[0] == "top"
        assert ie._configuration_arg("max_comments") == ["7", "7", "0", "0", "1"]
    assert listing_params(CollectConfig())["extract_flat"] == "in_playlist"


# --- collecting -----------------------------------------------------------------------------------------------

def test_collect_one_video_writes_the_record(tmp_path):
    world = World({watch_url(VID): INFO})
    api = FakeTranscriptApi(fetched(True))
    stats = collect([f"https://youtu.be/{VID}?si=x"], tmp_path / "out", config(), ydl_factory=world.factory,
                    transcript_api=api, sleep=lambda s: None)
    assert stats.collected == 1 and api.calls == []
    (rec,) = lines(tmp_path / "out" / "videos.jsonl")
    assert rec["id"] == VID and rec["url"] == watch_url(VID) and rec["category"] == "Education"
    assert (rec["channel"], rec["upload_date"], rec["duration"]) == ("Caption Lab", "20240102", 212)
    assert (rec["transcript_source"], rec["transcript_language"], rec["transcript_via"]) == ("auto", "en", "yt-dlp")
    assert rec["comment_sort"] == "top"
    assert rec["transcript"][1] == {"start": 2.08, "end": 4.0, "text": "hello world"}
    assert [c["id"] for c in rec["comments"]] == ["UgxPinnedByCreator0001", "UgxTopViewer000000002",
                                                  "UgxViewer000000000003", "UgxViewer000000000005"]  # no reply
    assert rec["comments"][0] == {"id": "UgxPinnedByCreator0001", "text": INFO["comments"][0]["text"],
                                  "like_count": 310, "author_is_uploader": True, "is_pinned": True,
                                  "parent": "root", "time_text": "2 days ago"}
    assert world.calls == [watch_url(VID), JSON3_URL]
    assert world.params[0]["extractor_args"]["youtube"]["comment_sort"] == ["top"]
    videos, _ = load_collect_dir(tmp_path / "out")
    assert videos[0].transcript == "hello world it's json3"
    assert [(c.text, c.like_count, c.rank) for c in videos[0].comments] == [
        ("This finally explains rolling captions \U0001F44D", 1200, 1),
        ("\U0001F468\u200d\U0001F4BB great video", 45, 2)]
    manifest = json.loads((tmp_path / "out" / "collect.json").read_text())
    assert manifest["stats"]["collected"] == 1 and manifest["options"]["comments_per_video"] == 20


def test_transcript_api_fallback_when_no_track(tmp_path):
    world = World({watch_url(VID): make_info(VID, automatic_captions={})})
    api = FakeTranscriptApi(fetched(False))
    collect([VID], tmp_path / "out", config(languages=["en", "de"]), ydl_factory=world.factory,
            transcript_api=api,
            sleep=lambda s: None)
    (rec,) = lines(tmp_path / "out" / "videos.jsonl")
    assert api.calls == [(VID, ["en", "de"])]
    assert (rec["transcript_source"], rec["transcript_via"]) == ("manual", "youtube-transcript-api")
    assert rec["transcript"] == [{"start": 0.5, "end": 2.0, "text": "hi & welcome"},
                                 {"start": 2.0, "end": 5.0, "text": "[Music]"}]


def test_transcript_api_fallback_when_the_track_download_fails(tmp_path):
    world = World({watch_url(VID): INFO}, files={})  # the json3 URL is not served: urlopen raises
    api = FakeTranscriptApi(fetched(True))
    collect([VID], tmp_path / "out", config(), ydl_factory=world.factory, transcript_api=api, sleep=lambda s: None)
    (rec,) = lines(tmp_path / "out" / "videos.jsonl")
    assert (rec["transcript_source"], rec["transcript_via"]) == ("auto", "youtube-transcript-api")
    assert world.calls == [watch_url(VID), JSON3_URL] and len(api.calls) == 1


@pytest.mark.parametrize("error, reason, permanent", [
    (yta.AgeRestricted(VID), "age_restricted", True),
    (yta.RequestBlocked(VID), "blocked", False),
    (yta.IpBlocked(VID), "blocked", False),
    (yta.TranscriptsDisabled(VID), "transcripts_disabled", True),
    (yta.NoTranscriptFound(VID, ["en"], "(generated) de"), "no_transcript_in_language", True),
    (yta.InvalidVideoId(watch_url(VID)), "invalid_video_id", True),
    (yta.VideoUnavailable(VID), "unavailable", True),
])
def test_transcript_api_errors_are_told_apart(tmp_path, error, reason, permanent):
    world = World({watch_url(VID): make_info(VID, automatic_captions={})})
    api, sleeps = FakeTranscriptApi(error), []
    stats = collect([VID], tmp_path / "out", config(retries=2), ydl_factory=world.factory, transcript_api=api,
                    sleep=sleeps.append)
    (skip,) = lines(tmp_path / "out" / "skipped.jsonl")
    assert (skip["id"], skip["reason"], skip["permanent"]) == (VID, reason, permanent)
    assert stats.skipped == {reason: 1} and stats.collected == 0
    if permanent:
        assert len(api.calls) == 1 and sleeps == []
    else:  # transient: retried with backoff, the info dict is fetched once
        assert len(api.calls) == 3 and sleeps == [5.0, 10.0] and skip["attempts"] == 3
        assert world.calls.count(watch_url(VID)) == 1
    if reason == "invalid_video_id":
        assert "a URL was passed where a video id was expected" in skip["detail"]


def test_transient_error_is_retried_with_exponential_backoff(tmp_path):
    busy = DownloadError("ERROR: [youtube] x: HTTP Error 429: Too Many Requests")
    world = World({watch_url(VID): [busy, busy, INFO]})
    sleeps: list[float] = []
    stats = collect([VID], tmp_path / "out", config(backoff=2.0), ydl_factory=world.factory,
                    transcript_api=FakeTranscriptApi(),
                    sleep=sleeps.append)
    assert stats.collected == 1 and sleeps == [2.0, 4.0]
    assert not (tmp_path / "out" / "skipped.jsonl").exists()


def test_transient_error_gives_up_then_next_run_retries(tmp_path):
    busy = DownloadError("ERROR: [youtube] x: HTTP Error 429: Too Many Requests")
    world = World({watch_url(VID): [busy, busy, busy, busy, INFO]})
    sleeps: list[float] = []
    cfg = config(retries=3, backoff=100.0, backoff_max=300.0)
    stats = collect([VID], tmp_path / "out", cfg, ydl_factory=world.factory, transcript_api=FakeTranscriptApi(),
                    sleep=sleeps.append)
    assert sleeps == [100.0, 200.0, 300.0] and stats.skipped == {"rate_limited": 1}
    (skip,) = lines(tmp_path / "out" / "skipped.jsonl")
    assert (skip["reason"], skip["permanent"], skip["attempts"]) == ("rate_limited", False, 4)
    stats = collect([VID], tmp_path / "out", cfg, ydl_factory=world.factory, transcript_api=FakeTranscriptApi(),
                    sleep=sleeps.append)
    assert stats.collected == 1  # not permanent: the next run tries again


def test_permanent_skips_are_not_retried_by_a_rerun(tmp_path):
    world = World({watch_url(IDS[0]): make_info(IDS[0], comments=None),
                   watch_url(IDS[1]): make_info(IDS[1], availability="subscriber_only"),
                   watch_url(IDS[2]): make_info(IDS[2], automatic_captions={})})
    cfg = config(transcript_api=False)
    stats = collect(IDS, tmp_path / "out", cfg, ydl_factory=world.factory, sleep=lambda s: None)
    assert stats.skipped == {"comments_disabled": 1, "members_only": 1, "no_transcript": 1}
    assert [(s["id"], s["reason"], s["permanent"]) for s in lines(tmp_path / "out" / "skipped.jsonl")] == [
        (IDS[0], "comments_disabled", True), (IDS[1], "members_only", True), (IDS[2], "no_transcript", True)]
    world.calls.clear()
    stats = collect(IDS, tmp_path / "out", cfg, ydl_factory=world.factory, sleep=lambda s: None)
    assert world.calls == [] and stats.already_skipped == 3


def test_resume_after_interrupt_completes_without_duplicates(tmp_path):
    listing = {"_type": "playlist", "id": "PLabcdefghij123",
               "entries": [{"_type": "url", "ie_key": "Youtube", "id": i, "url": watch_url(i)} for i in IDS]}
    pages = {PLAYLIST: listing, **{watch_url(i): make_info(i) for i in IDS}}
    pages[watch_url(IDS[1])] = [KeyboardInterrupt("Ctrl-C during the second video"), make_info(IDS[1])]
    world = World(pages)
    cfg, sleeps = config(), []
    with pytest.raises(KeyboardInterrupt, match="^Ctrl-C during the second video$"):
        collect([PLAYLIST], tmp_path / "out", cfg, ydl_factory=world.factory, transcript_api=FakeTranscriptApi(),
                    sleep=sleeps.append)
    out = tmp_path / "out" / "videos.jsonl"
    assert [r["id"] for r in lines(out)] == [IDS[0]]
    with open(out, "ab") as f:  # as if killed in the middle of writing the next line
        f.write(b'{"id": "' + IDS[1].encode() + b'", "title": "vid')
    assert json.loads((tmp_path / "out" / "collect.json").read_text())["stats"]["collected"] == 1
    world.calls.clear()
    stats = collect([PLAYLIST], tmp_path / "out", cfg, ydl_factory=world.factory, transcript_api=FakeTranscriptApi(),
                    sleep=sleeps.append)
    assert [r["id"] for r in lines(out)] == IDS
    assert (stats.collected, stats.already_done, stats.listed) == (2, 1, 3)
    assert watch_url(IDS[0]) not in world.calls
    assert [p.get("extract_flat") for p in world.params[-2:]] == [None, "in_playlist"]  # per-video, listing
    assert sleeps == [1.0, 1.0]  # --sleep between two fetched videos, in each run


def test_max_videos_counts_videos_already_in_the_dir(tmp_path):
    listing = {"entries": [{"id": i} for i in IDS] + [{"id": "not-a-video-id"}]}
    world = World({PLAYLIST: listing, **{watch_url(i): make_info(i) for i in IDS}})
    collect([PLAYLIST], tmp_path / "out", config(max_videos=1), ydl_factory=world.factory,
            transcript_api=FakeTranscriptApi(), sleep=lambda s: None)
    stats = collect([PLAYLIST], tmp_path / "out", config(max_videos=2), ydl_factory=world.factory,
                    transcript_api=FakeTranscriptApi(), sleep=lambda s: None)
    assert stats.collected == 1
    assert [r["id"] for r in lines(tmp_path / "out" / "videos.jsonl")] == IDS[:2]


def test_failed_listing_is_reported_and_other_targets_continue(tmp_path):
    world = World({"https://www.youtube.com/@gone/videos": DownloadError("ERROR: This channel does not exist."),
                   watch_url(VID): INFO})
    stats = collect(["@gone", VID], tmp_path / "out", config(), ydl_factory=world.factory,
                    transcript_api=FakeTranscriptApi(),
                    sleep=lambda s: None)
    assert stats.listing_failed == ["https://www.youtube.com/@gone/videos: unavailable"] and stats.collected == 1


def test_bad_options_and_locked_dir(tmp_path):
    world = World({})
    with pytest.raises(VrpError, match="cookies file not found"):
        collect([VID], tmp_path / "out", config(cookies=str(tmp_path / "c.txt")), ydl_factory=world.factory)
    with pytest.raises(ConfigError, match="comments_per_video: must be >= 1, got 0"):
        config(comments_per_video=0)
    with pytest.raises(ConfigError, match="languages: needs at least one language code"):
        config(languages=" , ")
    from vrp.locks import DirLock

    with DirLock(tmp_path / "out", "vrp collect"):  # another collector's lock (flock: per open file, so in-process)
        with pytest.raises(ConfigError, match=r"out: .*out: another `vrp collect` \(pid \d+.*\) is writing to this "
                                              r"directory"):
            collect([VID], tmp_path / "out", config(), ydl_factory=world.factory, transcript_api=FakeTranscriptApi())


def test_cli_collect_end_to_end_with_fake_yt_dlp(tmp_path, monkeypatch, capsys):
    import yt_dlp

    world = World({watch_url(VID): INFO})
    monkeypatch.setattr(yt_dlp, "YoutubeDL", world.factory)
    rc = main(["collect", f"https://m.youtube.com/watch?v={VID}&t=10", "--out", str(tmp_path / "d"),
               "--comments-per-video", "2", "--no-transcript-api", "--no-progress", "--proxy", "http://p:8080"])
    assert rc == 0 and "collected 1 new videos" in capsys.readouterr().out
    assert world.params[0]["extractor_args"]["youtube"]["max_comments"][:2] == ["2", "2"]
    assert world.params[0]["proxy"] == "http://p:8080"
    assert len(lines(tmp_path / "d" / "videos.jsonl")[0]["comments"]) == 2


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit, match="^0$"):
        main(["collect", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ["--out DIR", "--max-videos N", "--comments-per-video K", "(default: 20)", "--languages LANGS",
                 "(default: en)", "--sleep SECONDS", "(default: 1.0)", "--cookies FILE", "--proxy URL",
                 "--retries", "(default: 3)", "--backoff", "(default: 5.0)", "accepted forms:", "skipped.jsonl"]:
        assert text in out, text
