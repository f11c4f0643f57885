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
    """Register `vrp collect`; every `CollectConfig` field is a flag (flags override the --config YAML)."""
    from vrp.collect.config import CollectConfig
    from vrp.collect.youtube import ACCEPTED_FORMS
    from vrp.options import add_config_args

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
    add_config_args(p, CollectConfig, "collect options")
    return p


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the epilog's line breaks."""


def run(args: argparse.Namespace) -> int:
    """Run `vrp collect`; prints the counts. Exit status 0 when something was collected or nothing was left."""
    from vrp.collect.config import CollectConfig
    from vrp.collect.fetch import collect
    from vrp.collect.youtube import parse_target
    from vrp.options import config_from_args

    for url in args.urls:  # reject a bad argument before any import of yt-dlp or network call
        parse_target(url)
    s = collect(args.urls, args.out, config_from_args(CollectConfig, args))
    skipped = ", ".join(f"{k}: {v}" for k, v in sorted(s.skipped.items())) or "none"
    print(f"collected {s.collected} new videos into {args.out} (already there: {s.already_done}, "
          f"skipped before: {s.already_skipped}); skipped now: {skipped}")
    for failed in s.listing_failed:
        print(f"warning: listing failed for {failed}")
    return 0
