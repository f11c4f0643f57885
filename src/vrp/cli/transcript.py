"""`vrp transcript FILE`: print the clean transcript of a caption file (.vtt, .srt, .sbv, .json3, transcript-api
JSON, .txt)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp transcript`."""
    p = sub.add_parser("transcript", help="print the clean transcript text of a caption file",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Parse a WebVTT (.vtt), SubRip (.srt), YouTube Studio SubViewer (.sbv), YouTube "
                                   "json3 (.json3), youtube-transcript-api JSON (.json) or plain text (.txt) file "
                                   "with the same code `vrp collect` uses: tags, ASS override blocks and inline "
                                   "timings stripped, HTML entities decoded, repeated lines of rolling automatic "
                                   "captions removed. UTF-8, UTF-16 and UTF-32 files with a byte-order mark are "
                                   "read as such; a file that is not UTF-8 is read in the encoding "
                                   "charset-normalizer guesses, with a warning naming it.")
    p.add_argument("file", metavar="FILE", help="caption file (.vtt, .srt, .sbv, .json3, .json, .txt)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: one line of clean text; json: the segments [{start, end, text}] (seconds), with "
                        "annotations such as [Music] kept (the text drops them)")
    p.add_argument("--keep-annotations", action="store_true",
                   help="keep [Music]-style annotations and music notes in the text")
    return p


def run(args: argparse.Namespace) -> int:
    """Run `vrp transcript`; prints to stdout."""
    import json

    from vrp.errors import VrpError
    from vrp.transcripts import read_transcript, segments_to_text

    segments = read_transcript(args.file)
    text = segments_to_text(segments, drop_annotations=not args.keep_annotations)
    if not segments or (args.format == "text" and not text):
        raise VrpError(f"{args.file}: no transcript text in the file (empty, or only annotations such as [Music])"
                       if segments else f"{args.file}: no transcript text in the file (empty file or no captions)")
    if args.format == "json":
        print(json.dumps([s.to_json() for s in segments], ensure_ascii=False, indent=1))
    else:
        print(text)
    return 0
