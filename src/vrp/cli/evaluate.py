"""`vrp evaluate --data DATASET --model M [--run RUN ...] --out REPORT_DIR`: does the model use the video?"""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp evaluate`."""
    p = sub.add_parser(
        "evaluate", help="measure whether predicted comments fit the video (likelihood, gain, ranking, generation)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Evaluate a base model and zero or more fine-tuned runs on held-out videos: NLL/perplexity of the "
                    "real comments, video-conditioning gain (another video's prompt vs. its own, 95% bootstrap CI), "
                    "LiveBot-style ranking of real comments among 100 candidates vs. the analytic random baseline, "
                    "and reference-free metrics of generated comments. Writes report.md, metrics.json, "
                    "per_video.jsonl, generations.jsonl and PNG charts to --out.")
    p.add_argument("--data", required=True, help="dataset dir from `vrp prepare` (validation.jsonl is evaluated, "
                                                 "train.jsonl gives the frequent training comments), or any source "
                                                 "`vrp prepare` reads / a video .jsonl (all its videos are evaluated)")
    p.add_argument("--model", help="base model (smollm2-135m, .gguf, HF dir or id); default: the first run's base")
    p.add_argument("--run", action="append", default=[], help="run dir from `vrp train` (repeatable); evaluated "
                                                              "with its adapter on its own base model")
    p.add_argument("--out", required=True, help="report directory (must be empty or absent)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous report in a non-empty --out")
    p.add_argument("--max-videos", type=int, default=0, help="evaluate only the first N held-out videos (0 = all)")
    p.add_argument("--max-gen-videos", type=int, default=24,
                   help="generate for the first N held-out videos (0 = all; on-topic retrieval still searches all "
                        "evaluated videos). Beam search on a 2-core CPU takes ~20-50 s per video")
    p.add_argument("--presets", default="nucleus,beam", help="comma-separated decoding presets for the generation "
                                                             "metrics ('none' = skip generation)")
    p.add_argument("--num-comments", type=int, default=1, help="generated comments per video and preset")
    p.add_argument("--max-new-tokens", type=int, default=150, help="generation budget (the original used 150)")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="prompt budget (default: the run's, else 1024)")
    p.add_argument("--num-candidates", type=int, default=100, help="ranking candidates per video")
    p.add_argument("--seed", type=int, default=0, help="seed of candidates, derangement, bootstrap and sampling")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CPUs with AVX512-BF16/AMX), bf16 or fp32")
    p.add_argument("--score-row-tokens", type=int, default=512,
                   help="candidate tokens per packed scoring row (the prompt comes on top)")
    p.add_argument("--score-rows-per-batch", type=int, default=1, help="scoring rows per forward pass")
    p.add_argument("--seed-results", help="dir of the original project's outputs (*.xlsx, column text), e.g. "
                                          "/work/shared/data/uos2023/seed_results; needs --seed-test")
    p.add_argument("--seed-test", help="the original test set (test_dataset.xlsx): ours are generated for its "
                                       "videos and compared with --seed-results")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default; 1 can be much "
                                                          "faster when other processes share the CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    """Run `vrp evaluate`; prints the headline numbers and the report path."""
    import os
    import time
    from pathlib import Path

    from vrp.decoding import get_preset
    from vrp.errors import VrpError
    from vrp.evaluate.embed import load_embedder
    from vrp.evaluate.report import check_out_dir, write_outputs
    from vrp.evaluate.run import evaluate_run, load_eval_data
    from vrp.model import resolve_run

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads < 0:
        raise VrpError("--threads must be >= 0")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    if not args.model and not args.run:
        raise VrpError("give --model and/or --run")
    if args.seed_results and not args.seed_test:
        raise VrpError("--seed-results needs --seed-test (the test set whose videos the outputs belong to)")
    for flag in ("max_videos", "max_gen_videos"):
        if getattr(args, flag) < 0:
            raise VrpError(f"--{flag.replace('_', '-')} must be >= 0")
    if args.num_candidates < 2 or args.num_comments < 1 or args.max_new_tokens < 1:
        raise VrpError("--num-candidates must be >= 2, --num-comments and --max-new-tokens >= 1")
    presets = [] if args.presets.strip().lower() == "none" else [s.strip() for s in args.presets.split(",") if s.strip()]
    for pr in presets:
        get_preset(pr)
        if pr == "greedy" and args.num_comments > 1:
            raise VrpError("preset greedy gives one comment per video; use --num-comments 1 or another preset")
    models: list[tuple[str, str | None, str | None]] = []
    base = args.model or resolve_run(args.run[0])[0]
    models.append((f"base:{Path(base).name if os.sep in base else base}", base, None))
    for r in args.run:
        resolve_run(r)  # fail early on a bad run dir
        models.append((Path(r).resolve().name, None, r))
    if len({m[0] for m in models}) != len(models):
        raise VrpError("two --run dirs have the same name; give them different names")
    data = load_eval_data(args.data, args.max_videos)
    t0 = time.perf_counter()
    res, per_video, gen_rows = evaluate_run(
        data, models, load_embedder(), presets, args.num_comments, args.max_new_tokens, args.max_prompt_tokens,
        args.num_candidates, args.seed, args.precision, args.score_row_tokens, args.score_rows_per_batch,
        args.max_gen_videos, args.seed_test, args.seed_results if args.seed_test else None, not args.quiet)
    res["command"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    write_outputs(out, res, per_video, gen_rows, {m[0]: m[2] for m in models}, args.overwrite)
    for label, m in res["models"].items():
        lk, rk = m["likelihood"], m["ranking"]
        g = lk.get("conditioning_gain") or {}
        print(f"{label}: NLL/token {lk['nll_own']:.3f} (ppl {lk['perplexity_own']:.1f}); conditioning gain "
              f"{g.get('mean', float('nan')):+.3f} [{(g.get('ci95') or [float('nan')] * 2)[0]:+.3f}, "
              f"{(g.get('ci95') or [float('nan')] * 2)[1]:+.3f}]; Recall@1 {rk['own_prompt']['recall_at_1']:.3f} "
              f"(title only {rk['title_only']['recall_at_1']:.3f}, random {rk['random_baseline']['recall_at_1']:.3f}),"
              f" MRR {rk['own_prompt']['mrr']:.3f} (random {rk['random_baseline']['mrr']:.3f}); ranking "
              f"{m['timing_s']['ranking_total_s']:.0f} s")
    print(f"report written to {out / 'report.md'} ({time.perf_counter() - t0:.0f} s)")
    return 0
