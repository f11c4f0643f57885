"""`vrp evaluate --data DATASET --model M [--run RUN ...] --out REPORT_DIR`: does the model use the video?"""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp evaluate`; every `EvaluateConfig` field is a flag (flags override the --config YAML)."""
    from vrp.evaluate.config import EvaluateConfig
    from vrp.options import add_config_args

    p = sub.add_parser(
        "evaluate", help="measure whether predicted comments fit the video (likelihood, gain, ranking, generation)",
        description="Evaluate a base model and zero or more fine-tuned runs on held-out videos: NLL/perplexity of the "
                    "real comments, video-conditioning gain (another video's prompt vs. its own, 95% bootstrap CI), "
                    "LiveBot-style ranking of real comments among --num-candidates candidates (100 by default) vs. the "
                    "analytic random baseline, "
                    "and reference-free metrics of generated comments. Writes report.md, metrics.json, "
                    "per_video.jsonl, generations.jsonl and PNG charts to --out.")
    p.add_argument("--data", required=True, help="dataset dir from `vrp prepare` (validation.jsonl is evaluated, "
                                                 "train.jsonl gives the frequent training comments), or any source "
                                                 "`vrp prepare` reads / a video .jsonl (all its videos are evaluated)")
    p.add_argument("--run", action="append", default=[], help="run dir from `vrp train` (repeatable); evaluated "
                                                              "with its adapter on its own base model")
    p.add_argument("--out", required=True, help="report directory (must be empty or absent)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous report in a non-empty --out")
    add_config_args(p, EvaluateConfig, "evaluation options")
    return p


def models_to_evaluate(model: str | None, runs: list[str], checkpoint: str | None = None
                       ) -> list[tuple[str, str | None, object]]:
    """`(label, model spec, RunDir)` of the base model (`model`, else the first run's base) and each run, evaluated
    with its `checkpoint` (`step-000050`, `latest`, `best`; None = its adapter/, the last step's) and labelled
    `NAME@CHECKPOINT` then; every run dir is checked (config.yaml and adapter) before anything is computed."""
    import os
    from pathlib import Path

    from vrp.errors import ConfigError
    from vrp.rundir import RunDir

    dirs = [RunDir(r, checkpoint) for r in runs]
    if not model and not dirs:
        raise ConfigError("model", "give a `model` and/or a `run`")
    if checkpoint and not dirs:
        raise ConfigError("checkpoint", "needs a `run` (it names a checkpoint of each run)")
    base = model or dirs[0].model_spec()
    models: list[tuple[str, str | None, object]] = [(f"base:{Path(base).name if os.sep in base else base}", base,
                                                     None)]
    for d in dirs:
        d.adapter()  # fail early on a bad run dir
        models.append((d.path.resolve().name + (f"@{checkpoint}" if checkpoint else ""), None, d))
    if len({m[0] for m in models}) != len(models):
        raise ConfigError("run", "two run dirs have the same name; give them different names")
    return models


def shown(x: float | None, spec: str = ".3f") -> str:
    """A number of the summary lines, or `-` for one that was not measured (never `nan`)."""
    return "-" if x is None or x != x else format(x, spec)


def run(args: argparse.Namespace) -> int:
    """Run `vrp evaluate` holding the lock of its report dir (`vrp.locks`: a second command writing the same --out
    is refused while this one runs); prints the headline numbers and the report path."""
    from vrp.artifacts import ReportDir

    with ReportDir(args.out).lock("vrp evaluate"):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    import dataclasses
    import os
    import time

    from vrp.artifacts import ReportDir
    from vrp.embeddings import load_embedder
    from vrp.evaluate.candidates import check_candidate_count
    from vrp.evaluate.config import EvaluateConfig
    from vrp.evaluate.report import write_outputs
    from vrp.evaluate.run import evaluate_run, load_eval_data
    from vrp.evaluate.tier_ranking import evaluate_tiers, tier_summary
    from vrp.options import config_from_args

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = config_from_args(EvaluateConfig, args)
    import sys

    from vrp.evaluate.generation import mauve_available
    from vrp.precision import resolve_precision

    resolve_precision(cfg.precision)  # e.g. bf16 on a CPU without it: said before any data or model is loaded
    if cfg.preset_list() and not mauve_available():  # optional: said now, not only in the report at the end
        print("warning: MAUVE will not be computed: the optional package mauve-text is not installed (pip install "
              "'vrp[mauve]')", file=sys.stderr, flush=True)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    report = ReportDir(args.out)
    inputs = [("data", args.data), ("model", cfg.model), *(("run", r) for r in args.run)]
    report.check_new(args.overwrite, inputs=inputs)
    models = models_to_evaluate(cfg.model, args.run, cfg.checkpoint)
    data = load_eval_data(args.data, cfg.max_videos)
    check_candidate_count(data.videos, cfg.num_candidates)  # before any model is loaded
    t0 = time.perf_counter()
    embedder = load_embedder()
    res, per_video, gen_rows = evaluate_run(data, models, embedder, cfg)
    tiers, tier_rows = evaluate_tiers(data, models, embedder, cfg)  # (None, []) unless a run was trained with tiers
    if tiers is not None:
        res["tiers"] = tiers
        gen_rows += tier_rows
    res["command"] = {"data": args.data, "run": args.run, "out": args.out, "overwrite": args.overwrite,
                      **dataclasses.asdict(cfg)}
    write_outputs(report, res, per_video, gen_rows, {m[0]: m[2] for m in models}, args.overwrite,
                  inputs)
    for label, m in res["models"].items():
        lk, rk = m["likelihood"], m["ranking"]
        g = lk.get("conditioning_gain") or {}
        ci = g.get("ci95") or [None, None]
        own, title, rnd = (rk.get(k) or {} for k in ("own_prompt", "title_only", "random_baseline"))
        print(f"{label}: NLL/token {lk['nll_own']:.3f} (ppl {lk['perplexity_own']:.1f}); conditioning gain "
              f"{shown(g.get('mean'), '+.3f')} [{shown(ci[0], '+.3f')}, {shown(ci[1], '+.3f')}]; Recall@1 "
              f"{shown(own.get('recall_at_1'))} (title only {shown(title.get('recall_at_1'))}, random "
              f"{shown(rnd.get('recall_at_1'))}), MRR {shown(own.get('mrr'))} (random {shown(rnd.get('mrr'))}); "
              f"ranking {m['timing_s']['ranking_total_s']:.0f} s")
        if rk.get("pmi"):
            pm = rk["pmi"]
            print(f"{label}: PMI ranking (lambda {', '.join(f'{x:g}' for x in pm['lambdas'])}, cross-fitted): "
                  f"Recall@10 {shown(pm.get('recall_at_10'))}, MRR {shown(pm.get('mrr'))}")
        for setup, gm in m["generation"].items():
            show = {k: "-" if gm.get(k) is None else f"{gm[k]:.3g}" for k in ("finished_rate", "median_new_tokens",
                                                                               "mauve")}
            print(f"{label}/{setup}: finished {show['finished_rate']}, median new tokens "
                  f"{show['median_new_tokens']}, MAUVE {show['mauve']}")
    for label, t in ((tiers or {}).get("models") or {}).items():
        print(tier_summary(label, t))
    print(f"report written to {args.out}/report.md ({time.perf_counter() - t0:.0f} s)")
    return 0
