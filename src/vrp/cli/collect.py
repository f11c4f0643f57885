"""`vrp collect URL... --out DIR`: collect videos, transcripts and top comments from YouTube into a collect dir."""
from __future__ import annotations

import argparse
import textwrap

EPILOG = """\
{forms}

Writes DIR/videos.jsonl (one JSON line per video: id, url, title, description, channel, upload_date, duration,
category, transcript [{{start, end, text}}], transcript_source manual|auto, comments [{{id, text, like_count,
author_is_uploader, is_pinned, parent, time_text}}]), DIR/skipped.jsonl (id, reason, permanent) and
DIR/collect.json (options and counts). Re-running the same command resumes: collected and permanently skipped
videos (private, members-only, age-restricted, comments or transcripts disabled, no transcript) are not fetched
again; transient failures (HTTP 429, bot checks, timeouts) are retried with exponential backoff, and again by the
next run. Respect YouTube's terms of service and the commenters' privacy: `vrp prepare DIR` keeps only the text.
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp collect`."""
    from vrp.collect.youtube import ACCEPTED_FORMS

    p = sub.add_parser("collect", help="collect videos, transcripts and top comments from YouTube",
                       formatter_class=lambda prog: _Formatter(prog, width=118),
                       description=textwrap.fill(
                           "Download the title, metadata, transcript (manual captions preferred, else the automatic "
                           "ones in the original language) and the top-K comments (YouTube's 'top' order) of "
                           "YouTube videos, channels or playlists, with yt-dlp (youtube-transcript-api as the "
                           "transcript fallback).", 116),
                       epilog=EPILOG.format(forms=ACCEPTED_FORMS))
    p.add_argument("urls", nargs="+", metavar="URL",
                   help="video URL or 11-character id, channel (@handle or URL) or playlist URL")
    p.add_argument("--out", required=True, metavar="DIR", help="collect directory to write (created if missing)")
    p.add_argument("--max-videos", type=int, default=None, metavar="N",
                   help="stop once DIR holds N videos, earlier runs included (None: all listed videos)")
    p.add_argument("--comments-per-video", type=int, default=20, metavar="K",
                   help="top-level comments to fetch per video, sorted by 'top' (YouTube's relevance order)")
    p.add_argument("--languages", default="en", metavar="LANGS",
                   help="comma-separated transcript languages in order of preference (ISO 639-1, e.g. en,de)")
    p.add_argument("--sleep", type=float, default=1.0, metavar="SECONDS", help="pause between two videos")
    p.add_argument("--cookies", default=None, metavar="FILE",
                   help="Netscape-format cookies file for yt-dlp (e.g. for age-restricted videos; "
                        "youtube-transcript-api does not use it)")
    p.add_argument("--proxy", default=None, metavar="URL",
                   help="HTTP/HTTPS/SOCKS proxy URL for yt-dlp and youtube-transcript-api")
    p.add_argument("--retries", type=int, default=3, help="retries of a transient failure (HTTP 429, timeout)")
    p.add_argument("--backoff", type=float, default=5.0, metavar="SECONDS",
                   help="first retry delay; doubled on each retry, at most 300 s")
    p.add_argument("--no-transcript-api", action="store_true",
                   help="do not fall back to youtube-transcript-api when yt-dlp gives no usable subtitle track")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the epilog's line breaks."""


def run(args: argparse.Namespace) -> int:
    """Run `vrp collect`; prints the counts. Exit status 0 when something was collected or nothing was left."""
    from pathlib import Path

    from vrp.collect.fetch import CollectConfig, collect
    from vrp.collect.youtube import parse_target
    from vrp.errors import VrpError

    for url in args.urls:  # reject a bad argument before any import of yt-dlp or network call
        parse_target(url)
    languages = tuple(x.strip() for x in args.languages.split(",") if x.strip())
    if not languages:
        raise VrpError("--languages needs at least one language code, e.g. en")
    config = CollectConfig(out_dir=Path(args.out), max_videos=args.max_videos,
                           comments_per_video=args.comments_per_video, languages=languages, sleep_s=args.sleep,
                           cookies=Path(args.cookies) if args.cookies else None, proxy=args.proxy,
                           retries=args.retries, backoff_s=args.backoff,
                           use_transcript_api=not args.no_transcript_api, progress=not args.no_progress)
    s = collect(args.urls, config)
    skipped = ", ".join(f"{k}: {v}" for k, v in sorted(s.skipped.items())) or "none"
    print(f"collected {s.collected} new videos into {args.out} (already there: {s.already_done}, "
          f"skipped before: {s.already_skipped}); skipped now: {skipped}")
    for failed in s.listing_failed:
        print(f"warning: listing failed for {failed}")
    return 0
