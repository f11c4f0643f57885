"""`vrp generate`: predict comments for videos with a base model or a fine-tuned run."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from vrp.generate.config import GenerateConfig
    from vrp.records import Video


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp generate`; every `GenerateConfig` field is a flag (flags override the --config YAML)."""
    from vrp.generate.config import GenerateConfig
    from vrp.options import add_config_args
    from vrp.presets import PRESETS

    p = sub.add_parser("generate", help="predict comments for videos",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Predict comments with a base model (--model) or a fine-tuned run (--run). "
                                   "Presets:\n" + "\n".join(f"  {n:17s} {pr.description}" for n, pr in PRESETS.items()))
    inp = p.add_argument_group("input (one of --input / --title+--transcript)")
    inp.add_argument("--input", help="dataset dir, .jsonl, .xlsx (seed or table), .csv, .parquet, or a transcript "
                                     "file (.txt, .vtt, .srt, .sbv, .json3, .json)")
    inp.add_argument("--title", default="", help="video title (with --transcript)")
    inp.add_argument("--transcript", help="transcript text")
    inp.add_argument("--max-videos", type=int, default=0, help="only the first N videos (0 = all)")
    p.add_argument("--out", help="output file: .csv, .xlsx or .jsonl (required; refused with --print-prompt, which "
                                 "prints to stdout). .jsonl is written as it goes, one video at a time, and is "
                                 "resumable: a rerun with the same --out and options skips the videos already in it "
                                 "(options are kept in FILE.jsonl.meta.json; other options are refused); .csv and "
                                 ".xlsx are written once at the end (docs/generation.md)")
    p.add_argument("--print-prompt", choices=("text", "user", "json"),
                   help="print the prompt of the video instead of generating (no model weights are loaded): text = "
                        "the whole prompt text vrp tokenizes (for raw completion APIs), user = the user message "
                        "(Ollama's prompt for an exported Modelfile, a chat API's user message), json = one JSON "
                        "line per video with both and the system prompt; the transcript is cut to the budget as "
                        "vrp cuts it (docs/export.md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (a .jsonl: start it over "
                                                             "instead of resuming it)")
    p.add_argument("--no-escape-formulas", dest="escape_formulas", action="store_false",
                   help="write .csv text cells as generated: without the leading ' that keeps spreadsheets from "
                        "running a cell starting with =, +, -, @, tab or CR as a formula (for programs reading it)")
    add_config_args(p, GenerateConfig, "model and decoding")
    return p


def run(args: argparse.Namespace) -> int:
    """Run `vrp generate` and print a short table."""
    from pathlib import Path

    from vrp.errors import ConfigError
    from vrp.files import check_writable
    from vrp.generate.config import GenerateConfig
    from vrp.generate.run import load_inputs, predict, write_predictions
    from vrp.options import config_from_args

    if args.print_prompt:
        return _print_prompts(args)
    if not args.out:
        raise ConfigError("out", "is required (or use `print_prompt`)")
    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".xlsx", ".jsonl"):
        raise ConfigError("out", f"unknown extension {out.suffix!r}; use .csv, .xlsx or .jsonl")
    if out.is_dir():
        raise ConfigError("out", f"{out} is a directory; give a file name ending in .csv, .xlsx or .jsonl")
    here = out.expanduser().resolve()
    for name in ("input", "run", "model", "config"):  # never write over a file the command reads
        given = getattr(args, name, None)
        if out.exists() and given and Path(given).expanduser().exists():
            source = Path(given).expanduser().resolve()
            if source == here or source in here.parents:
                raise ConfigError("out", f"{out} is or lies in an input of the command, `{name}` ({given}); "
                                         f"write the predictions elsewhere")
    stream = out.suffix.lower() == ".jsonl"  # written as it goes, resumable (`vrp.generate.stream`)
    if out.exists() and not args.overwrite and not stream:
        raise ConfigError("out", f"{out} exists; pass `overwrite` to replace it")
    check_writable(out, "out")
    cfg = config_from_args(GenerateConfig, args)
    videos = load_inputs(args.input, args.title, args.transcript, args.max_videos)
    if stream:
        return _stream(args, cfg, videos, out)
    rows = predict(videos, cfg)
    # without --overwrite a file another command wrote meanwhile (the same --out) is not replaced
    write_predictions(rows, out, escape_formulas=args.escape_formulas, replace=args.overwrite)
    for r in rows[:20]:
        print(f"[{r['video_id'][:16]} {r['preset']}] {r['comment'][:100]!r}")
    print(f"{len(rows)} comment{'s' * (len(rows) != 1)} for {len(videos)} video{'s' * (len(videos) != 1)} "
          f"written to {out}")
    return 0


def _stream(args: argparse.Namespace, cfg: GenerateConfig, videos: list[Video], out: Path) -> int:
    """`--out FILE.jsonl`: each video's rows appended as they come; a rerun resumes (`vrp.generate.stream`)."""
    from vrp.generate.run import predict_videos
    from vrp.generate.stream import run_meta, stream_predictions

    meta = run_meta(cfg, args.input, args.title, args.transcript, args.max_videos)
    res = stream_predictions(out, videos, meta, args.overwrite, lambda start: predict_videos(videos, cfg, start=start))
    for r in res.head:
        print(f"[{r['video_id'][:16]} {r['preset']}] {r['comment'][:100]!r}")
    skipped = f" ({res.skipped} video{'s' * (res.skipped != 1)} already in it)" if res.skipped else ""
    print(f"{res.rows} comment{'s' * (res.rows != 1)} for {res.videos} video{'s' * (res.videos != 1)} written to "
          f"{out}{skipped}")
    return 0


def _print_prompts(args: argparse.Namespace) -> int:
    """`--print-prompt`: the prompt text, the user message, or JSON lines of both, for each input video (text and
    user need exactly one video; they are printed as they are, without a newline added)."""
    import json
    import sys

    from vrp.errors import ConfigError
    from vrp.export.prompts import video_prompts
    from vrp.generate.config import GenerateConfig
    from vrp.generate.run import load_inputs
    from vrp.options import config_from_args
    from vrp.rundir import RunDir

    if args.out:  # the prompts go to stdout: an --out given with them would silently stay unwritten
        raise ConfigError("out", f"{args.out} would not be written: `print_prompt` prints to stdout; leave out `out` "
                                 f"and redirect stdout to a file")
    cfg = config_from_args(GenerateConfig, args)
    if cfg.run and cfg.checkpoint:  # the prompt needs no weights, but a mistyped checkpoint is still an error
        RunDir(cfg.run).adapter(cfg.checkpoint)
    videos = load_inputs(args.input, args.title, args.transcript, args.max_videos)
    if args.print_prompt != "json" and len(videos) != 1:
        raise ConfigError("print_prompt", f"{args.print_prompt} prints the prompt of one video and the input has "
                                          f"{len(videos)}; use `max_videos` 1 or `print_prompt` json")
    prompts = video_prompts(videos, cfg.model, cfg.run, cfg.max_prompt_tokens, cfg.tier)
    if args.print_prompt == "json":
        for vp in prompts:
            sys.stdout.write(json.dumps(vp.to_json(), ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(prompts[0].text if args.print_prompt == "text" else prompts[0].user)
    return 0
