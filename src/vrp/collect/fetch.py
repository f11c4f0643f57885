"""Collect videos, transcripts and top comments from YouTube: the yt-dlp / youtube-transcript-api boundary.

Knows: the yt-dlp options for a flat listing of a channel or playlist and for one video's info dict with comments
sorted by "top" and capped at K top-level comments (`extractor_args={"youtube": {"comment_sort": ["top"],
"max_comments": [K, K, "0", "0", "1"]}}`: max-comments, max-parents, max-replies, max-replies-per-thread,
max-depth, as yt-dlp's YoutubeIE reads them; values are strings); downloading the chosen subtitle track with
`YoutubeDL.urlopen`; youtube-transcript-api 1.x as the transcript fallback (`YouTubeTranscriptApi().fetch(video_id,
languages=[...])`); retries with exponential backoff; the options of `vrp collect` (`CollectConfig`); and the
resumable run loop appending to the collect dir's `videos.jsonl` / `skipped.jsonl` (`vrp.artifacts.CollectDir`).
Both libraries are injected (`ydl_factory`, `transcript_api`), so tests replace them with fakes.
Does not know: URL forms, track choice and error classes (see `vrp.collect.youtube`), caption parsing (see
`vrp.transcripts`), comment cleaning (see `vrp.collected`).
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from vrp.artifacts import CollectDir
from vrp.collect.config import CollectConfig
from vrp.collect.youtube import (
    ACCEPTED_FORMS,
    VIDEO_ID_RE,
    Failure,
    Target,
    classify_error,
    parse_target,
    select_subtitle_track,
    watch_url,
)
from vrp.errors import ConfigError, VrpError
from vrp.transcripts import parse_transcript_api, parse_transcript_bytes

log = logging.getLogger(__name__)

UNAVAILABLE = {"private": "private", "subscriber_only": "members_only", "premium_only": "premium_only"}




class _YdlLogger:
    """Routes yt-dlp's messages to `logging` (debug level) so they do not break the progress bar."""

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    info = warning = error = debug


def _base_params(config: CollectConfig) -> dict[str, Any]:
    params: dict[str, Any] = {"quiet": True, "no_warnings": True, "noprogress": True, "skip_download": True,
                              "socket_timeout": config.socket_timeout, "logger": _YdlLogger()}
    if config.cookies:
        params["cookiefile"] = config.cookies
    if config.proxy:
        params["proxy"] = config.proxy
    return params


def listing_params(config: CollectConfig) -> dict[str, Any]:
    """yt-dlp options for a flat, lazy listing of a channel tab or playlist (ids only, no per-video requests)."""
    return {**_base_params(config), "extract_flat": "in_playlist", "lazy_playlist": True}


def video_params(config: CollectConfig) -> dict[str, Any]:
    """yt-dlp options for one video's info dict with comments sorted by `config.comment_sort` and capped at
    `config.comments_per_video` top-level comments, no replies. Formats are not needed, so a video without playable
    formats still gives its metadata (`ignore_no_formats_error`)."""
    k = str(config.comments_per_video)
    return {**_base_params(config), "getcomments": True, "noplaylist": True, "ignore_no_formats_error": True,
            "extractor_args": {"youtube": {"comment_sort": [config.comment_sort],
                                           "max_comments": [k, k, "0", "0", "1"]}}}


def video_record(info: dict[str, Any], segments: list, source: str, language: str | None, via: str,
                 max_comments: int, comment_sort: str = "top") -> dict[str, Any]:
    """The `videos.jsonl` line of one video: metadata from the yt-dlp info dict, transcript segments and at most
    `max_comments` top-level comments as yt-dlp gave them (cleaning happens when the dir is loaded)."""
    comments = [c for c in info.get("comments") or [] if (c.get("parent") or "root") == "root"][:max_comments]
    return {
        "id": info["id"], "url": watch_url(info["id"]), "title": info.get("title") or "",
        "description": info.get("description") or "", "channel": info.get("channel") or info.get("uploader"),
        "channel_id": info.get("channel_id"), "upload_date": info.get("upload_date"),
        "duration": info.get("duration"), "category": (info.get("categories") or [None])[0],
        "transcript_source": source, "transcript_language": language, "transcript_via": via,
        "transcript": [s.to_json() for s in segments],
        "comment_sort": comment_sort, "comments": [{
            "id": c.get("id"), "text": c.get("text") or "", "like_count": c.get("like_count"),
            "author_is_uploader": bool(c.get("author_is_uploader")), "is_pinned": bool(c.get("is_pinned")),
            "parent": c.get("parent") or "root", "time_text": c.get("_time_text") or c.get("time_text"),
        } for c in comments],
        "collected_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


class _Failed(Exception):
    def __init__(self, failure: Failure):
        super().__init__(failure.reason)
        self.failure = failure


def _boundary(fn: Callable[[], Any]) -> Any:
    """Call into yt-dlp or youtube-transcript-api; turn any error into a classified `_Failed`."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - every library error is classified, none is swallowed silently
        raise _Failed(classify_error(e)) from e


@dataclass
class CollectStats:
    """Counts of one run: videos listed, collected now, skipped now by reason, already done or permanently
    skipped in earlier runs, and targets whose listing failed."""

    listed: int = 0
    collected: int = 0
    skipped: Counter = field(default_factory=Counter)
    already_done: int = 0
    already_skipped: int = 0
    listing_failed: list[str] = field(default_factory=list)


class Collector:
    """One resumable collection run into a collect dir (see `collect`)."""

    def __init__(self, out: CollectDir, config: CollectConfig, ydl_factory: Callable[[dict[str, Any]], Any],
                 transcript_api: Any, sleep: Callable[[float], None]):
        self.out, self.config, self.ydl_factory, self.api, self.sleep = out, config, ydl_factory, transcript_api, sleep
        self.stats = CollectStats()

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        """Run `fn`, retrying a transient `_Failed` with exponential backoff; re-raise the last `_Failed` with its
        attempt count."""
        cfg = self.config
        for attempt in range(cfg.retries + 1):
            try:
                return fn()
            except _Failed as e:
                if not e.failure.retry or attempt == cfg.retries:
                    e.failure = Failure(**{**asdict(e.failure), "attempts": attempt + 1})
                    raise
                delay = min(cfg.backoff_max, cfg.backoff * 2 ** attempt)
                log.info("%s; retrying in %.0f s", e.failure.detail, delay)
                self.sleep(delay)

    def iter_video_ids(self, targets: Sequence[Target]) -> Iterator[str]:
        """Video ids in target order: a video target directly, a channel/playlist through a flat listing."""
        for t in targets:
            if t.kind == "video":
                yield t.id
                continue
            try:
                with self.ydl_factory(listing_params(self.config)) as ydl:
                    info = self._retrying(lambda: _boundary(lambda: ydl.extract_info(t.url, download=False)))
                    entries = iter((info or {}).get("entries") or [])
                    while True:
                        entry = _boundary(lambda: next(entries, None))
                        if entry is None:
                            break
                        vid = entry.get("id") if isinstance(entry, dict) else None
                        if isinstance(vid, str) and VIDEO_ID_RE.match(vid):
                            yield vid
            except _Failed as e:
                log.warning("%s: listing failed (%s: %s)", t.url, e.failure.reason, e.failure.detail)
                self.stats.listing_failed.append(f"{t.url}: {e.failure.reason}")

    def fetch_video(self, ydl: Any, video_id: str, cache: dict[str, Any]) -> dict[str, Any]:
        """Info dict (cached across retries), checks, transcript; the `videos.jsonl` record. Raises `_Failed`."""
        if "info" not in cache:
            info = _boundary(lambda: ydl.extract_info(watch_url(video_id), download=False))
            if not isinstance(info, dict):
                raise _Failed(Failure("error", False, False, "yt-dlp returned no info dict"))
            cache["info"] = {**info, "id": info.get("id") or video_id}
        info = cache["info"]
        if info.get("availability") in UNAVAILABLE:
            reason = UNAVAILABLE[info["availability"]]
            raise _Failed(Failure(reason, True, False, f"availability={info['availability']}"))
        if info.get("live_status") in ("is_live", "is_upcoming"):
            raise _Failed(Failure("live_or_upcoming", True, False, f"live_status={info['live_status']}"))
        if info.get("comments") is None:
            raise _Failed(Failure("comments_disabled", True, False, "yt-dlp found no comment section"))
        if not any((c.get("parent") or "root") == "root" for c in info["comments"]):
            raise _Failed(Failure("no_comments", True, False, "the video has no top-level comments"))
        if "transcript" not in cache:
            cache["transcript"] = self.fetch_transcript(ydl, info)
        return video_record(info, *cache["transcript"], max_comments=self.config.comments_per_video,
                            comment_sort=self.config.comment_sort)

    def fetch_transcript(self, ydl: Any, info: dict[str, Any]) -> tuple[list, str, str | None, str]:
        """(segments, source manual|auto, language, via) from the chosen yt-dlp track, else youtube-transcript-api.
        Raises `_Failed` (e.g. `no_transcript`, `transcripts_disabled`, `no_transcript_in_language`, `blocked`)."""
        video_id, langs = info["id"], list(self.config.languages)
        track = select_subtitle_track(info, langs)
        if track is not None:
            try:
                def read() -> bytes:
                    resp = ydl.urlopen(track.url)
                    try:
                        return resp.read()
                    finally:
                        resp.close()
                segments = parse_transcript_bytes(_boundary(read), f"{video_id}.{track.language}.{track.ext}")
                if segments:
                    return segments, track.source, track.language, "yt-dlp"
            except (_Failed, VrpError) as e:
                log.info("%s: subtitle track %s unusable (%s); trying youtube-transcript-api", video_id, track, e)
        if self.api is None:
            raise _Failed(Failure("no_transcript", True, False, f"no subtitle track in {','.join(langs)}"))
        fetched = _boundary(lambda: self.api.fetch(video_id, languages=langs))
        segments = parse_transcript_api(getattr(fetched, "snippets", fetched), f"{video_id} (transcript-api)")
        if not segments:
            raise _Failed(Failure("no_transcript", True, False, "youtube-transcript-api returned an empty transcript"))
        source = "auto" if getattr(fetched, "is_generated", False) else "manual"
        return segments, source, getattr(fetched, "language_code", None), "youtube-transcript-api"

    def run(self, targets: Sequence[Target]) -> CollectStats:
        """Collect every video of `targets` not yet done or permanently skipped; stop at `max_videos`."""
        from tqdm import tqdm

        cfg, out = self.config, self.out
        out.repair()
        done = out.done_ids()
        permanent = {vid for vid, r in out.skipped().items() if r.get("permanent")}
        seen: set[str] = set()
        bar = tqdm(total=cfg.max_videos, initial=min(len(done), cfg.max_videos or len(done)), unit="video",
                   desc="collect", disable=not cfg.progress, dynamic_ncols=True)
        with bar, self.ydl_factory(video_params(cfg)) as ydl:
            for video_id in self.iter_video_ids(targets):
                if cfg.max_videos is not None and len(done) >= cfg.max_videos:
                    break
                if video_id in seen:
                    continue
                seen.add(video_id)
                self.stats.listed += 1
                if video_id in done or video_id in permanent:
                    self.stats.already_done += video_id in done
                    self.stats.already_skipped += video_id in permanent
                    continue
                if self.stats.collected or sum(self.stats.skipped.values()):
                    self.sleep(cfg.sleep)
                cache: dict[str, Any] = {}
                try:
                    record = self._retrying(lambda: self.fetch_video(ydl, video_id, cache))
                except _Failed as e:
                    f = e.failure
                    out.append_skipped({"id": video_id, "url": watch_url(video_id), **asdict(f)})
                    self.stats.skipped[f.reason] += 1
                    message = f"skipped {video_id}: {f.reason} ({f.detail})"
                    if cfg.progress:
                        bar.write(message)
                    else:
                        log.info(message)
                else:
                    out.append_video(record)
                    done.add(video_id)
                    self.stats.collected += 1
                    bar.update(1)
                bar.set_postfix(done=len(done), skipped=sum(self.stats.skipped.values()), refresh=False)
        return self.stats


def _default_transcript_api(config: CollectConfig) -> Any:
    from youtube_transcript_api import YouTubeTranscriptApi
    from youtube_transcript_api.proxies import GenericProxyConfig

    proxy = GenericProxyConfig(http_url=config.proxy, https_url=config.proxy) if config.proxy else None
    return YouTubeTranscriptApi(proxy_config=proxy)


def collect(targets: Sequence[str], out: str | Path | CollectDir, config: CollectConfig | None = None,
            ydl_factory: Callable[[dict[str, Any]], Any] | None = None, transcript_api: Any = None,
            sleep: Callable[[float], None] = time.sleep) -> CollectStats:
    """Collect `targets` (URLs, @handles, ids; all validated before any network call) into the collect dir `out`.

    Appends one line per collected video to `videos.jsonl` and one per skipped video to `skipped.jsonl`
    (`{id, url, reason, permanent, retry, detail, attempts}`), and writes `collect.json` (options and counts)
    atomically at the end (layout: `vrp.artifacts.CollectDir`). Resumable: ids already in `videos.jsonl`, or
    permanently skipped, are not fetched again; transiently skipped ones are retried on the next run.
    `ydl_factory(params)` must return a context manager with `extract_info(url, download=False)` and `urlopen(url)`
    (default `yt_dlp.YoutubeDL`); `transcript_api` needs `fetch(video_id, languages=[...])` (default
    `YouTubeTranscriptApi()` unless `config.transcript_api` is False). Raises VrpError on a bad target,
    ConfigError on a missing cookies file, ConfigError('out') if another command holds the directory (`vrp.locks`).
    """
    config = config or CollectConfig()
    out = out if isinstance(out, CollectDir) else CollectDir(out)
    parsed = [parse_target(t) for t in targets]
    if not parsed:
        raise VrpError("no URL given; " + ACCEPTED_FORMS)
    if config.cookies and not Path(config.cookies).is_file():
        raise ConfigError("cookies", f"{config.cookies}: cookies file not found (export one in Netscape format)")
    if ydl_factory is None:
        from yt_dlp import YoutubeDL as ydl_factory
    if transcript_api is None and config.transcript_api:
        transcript_api = _default_transcript_api(config)
    collector = Collector(out, config, ydl_factory, transcript_api if config.transcript_api else None, sleep)
    with out.lock("vrp collect"):
        try:
            return collector.run(parsed)
        finally:
            s = collector.stats
            out.write_summary({
                "targets": [asdict(t) for t in parsed],
                "options": {"out_dir": str(out), **asdict(config)},
                "stats": {**asdict(s), "skipped": dict(s.skipped)},
                "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            })
