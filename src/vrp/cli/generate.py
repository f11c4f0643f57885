"""`vrp generate`: predict comments for videos with a base model or a fine-tuned run."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp generate`."""
    from vrp.decoding import DEFAULT_PRESET, MAX_NEW_TOKENS, PRESETS

    p = sub.add_parser("generate", help="predict comments for videos", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Predict comments. Presets:\n" + "\n".join(
                           f"  {n:17s} {pr.description}" for n, pr in PRESETS.items()))
    src = p.add_argument_group("model (one of --run / --model)")
    src.add_argument("--run", help="run dir from `vrp train` (its base model + adapter)")
    src.add_argument("--checkpoint", help="use RUN/checkpoints/<name>/adapter instead of RUN/adapter ('latest' ok)")
    src.add_argument("--model", help="base model (smollm2-135m, .gguf, HF dir or id); overrides the run's")
    inp = p.add_argument_group("input (one of --input / --title+--transcript)")
    inp.add_argument("--input", help="dataset dir, .jsonl, .xlsx (seed or table), .csv, .parquet, or a transcript "
                                     "file (.txt, .vtt, .srt, .json3)")
    inp.add_argument("--title", default="", help="video title (with --transcript)")
    inp.add_argument("--transcript", help="transcript text")
    inp.add_argument("--max-videos", type=int, default=0, help="only the first N videos (0 = all)")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"decoding preset, or several separated by commas (default: {DEFAULT_PRESET})")
    p.add_argument("--num-comments", type=int, default=1, help="comments per video (default: 1)")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help=f"(default: {MAX_NEW_TOKENS})")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="prompt budget (default: the run's, else 1024)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--precision", default="auto", help="auto, bf16 or fp32 (default: auto)")
    p.add_argument("--out", required=True, help="output file: .csv, .xlsx or .jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p


def run(args: argparse.Namespace) -> int:
    """Run `vrp generate` and print a short table."""
    from pathlib import Path

    from vrp.errors import VrpError
    from vrp.io import check_writable
    from vrp.predict import load_inputs, predict, write_predictions

    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".xlsx", ".jsonl"):
        raise VrpError(f"--out: unknown extension {out.suffix!r}; use .csv, .xlsx or .jsonl")
    if out.is_dir():
        raise VrpError(f"--out: {out} is a directory; give a file name ending in .csv, .xlsx or .jsonl")
    if out.exists() and not args.overwrite:
        raise VrpError(f"--out: {out} exists; pass --overwrite to replace it")
    check_writable(out, "--out")
    presets = [x.strip() for x in args.preset.split(",") if x.strip()]
    if not presets:
        raise VrpError(f"--preset: no preset named in {args.preset!r}")
    if args.checkpoint and not args.run:
        raise VrpError("--checkpoint needs --run (it names a checkpoint of that run)")
    videos = load_inputs(args.input, args.title, args.transcript, args.max_videos)
    rows = predict(videos, run=args.run, model=args.model, checkpoint=args.checkpoint, presets=presets,
                   num_comments=args.num_comments, max_new_tokens=args.max_new_tokens, seed=args.seed,
                   precision=args.precision, max_prompt_tokens=args.max_prompt_tokens)
    write_predictions(rows, out)
    for r in rows[:20]:
        print(f"[{r['video_id'][:16]}] {r['comment'][:100]!r}")
    print(f"{len(rows)} comments for {len(videos)} videos written to {out}")
    return 0
