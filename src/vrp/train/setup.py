"""Setting up a training run: checks, data, model + LoRA, optimizer and schedule, the run dir, the starting state.

Knows: the order in which a run starts (everything that can fail on bad input — run dir, data, precision, model,
context length, LoRA targets, optimizer — is checked before the run dir is created or emptied, so a failed start
leaves nothing behind), the seeding (`torch.manual_seed(cfg.seed)` before the model is loaded, so the LoRA init is a
function of the seed), and where a run starts from: its newest checkpoint on resume (`RunDir.latest_checkpoint`),
else step 0 after the base model's validation NLL, and where the tokens come from: the dataset's token cache
(`vrp.token_cache`, built by one process while the others wait; in memory with `token_cache` off). In a launched
run (`vrp.train.distributed`) the process group is joined before the model is loaded, rank 0 alone checks, reads and creates the run dir (its errors reach every rank),
the model is wrapped in DDP / FSDP before the optimizer is built, and an epoch has ceil(micro-batches / (grad_accum x
world size)) optimizer steps.
Does not know: the optimizer step loop (`vrp.train.loop`), how checkpoints are written (`vrp.train.checkpoint`).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from vrp.adapter import attach_lora
from vrp.artifacts import DatasetDir
from vrp.errors import ConfigError, VrpError
from vrp.model import check_context, load_base_model
from vrp.options import build_config
from vrp.packing import make_rows, micro_batches
from vrp.precision import resolve_precision
from vrp.prompt_format import resolve_prompt_config
from vrp.rundir import RunDir
from vrp.tiers import dataset_format, longest_marker, resolve_tier_source
from vrp.token_cache import TierSettings, cached_split, encode_split, gc_paused, split_videos
from vrp.train.checkpoint import (
    data_position,
    keep_best,
    load_checkpoint,
    position_of,
    resume_checkpoint,
    resumed_best,
    steps_until,
)
from vrp.train.compile import check_compiler, compile_decoder_layers
from vrp.train.config import PATH_OPTIONS, TrainConfig, check_resumable, resolve_path_option
from vrp.train.distributed import Dist, start
from vrp.train.memory import plan_memory
from vrp.train.optim import build_optimizer, resolve_optimizer
from vrp.train.packing_check import packing_check, validation_packing
from vrp.train.probes import build_probe_set, validate


@dataclass
class TrainSetup:
    """Everything a run needs once it has started. n_train_videos/n_val_videos: videos of each split after the cuts;
    rows/val_rows: packed rows (`vrp.packing.Row`, or `vrp.packing.LazyRow` over the token cache); per_epoch:
    optimizer steps per epoch; total_steps: optimizer steps of the whole run; data_sha: `DatasetDir.fingerprint`;
    probes: the learning-curve probe data (`vrp.train.probes.ProbeSet`, None when `curve_videos` is 0 or there is no
    validation video)."""

    cfg: TrainConfig
    run: RunDir
    data_sha: str
    prec: Any
    model: Any
    tokenizer: Any
    n_train_videos: int
    n_val_videos: int
    rows: list[Any]
    val_rows: list[Any]
    optimizer: Any
    scheduler: Any
    per_epoch: int
    total_steps: int
    probes: Any = None
    dist: Dist = field(default_factory=Dist)
    memory: Any = None  # `vrp.train.memory.MemoryPlan` when `max_memory` is set: rows per micro-batch
    val_packing: str = "shared_prefix"  # 'none' for a model vrp cannot shared-prefix mask (`vrp.layer_masks`)
    packing_check: dict[str, Any] | None = None  # `vrp.train.packing_check` result of a shared-prefix run


@dataclass
class TrainState:
    """Where a run stands: optimizer steps done, comments and tokens trained on, seconds spent in optimizer steps,
    the base model's validation result (`{nll, perplexity, tokens}` or None), the per-step history and the best
    validation so far (`{step, val_nll}` or None, `vrp.train.checkpoint.keep_best`)."""

    step: int = 0
    comments_seen: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    base_val: dict[str, float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    epoch: int = 0
    micro_batch: int = 0

    def checkpoint_fields(self, data_sha: str, batch_size: int) -> dict[str, Any]:
        """What a checkpoint's state.json holds besides its step (`data_position`: `epoch` and `micro_batch`, the
        micro-batches of `batch_size` rows of that epoch's order trained, `vrp.train.checkpoint.data_position`)."""

        return {"comments_seen": self.comments_seen, "tokens_seen": self.tokens_seen, "data_sha256": data_sha,
                "train_seconds": self.train_seconds, "base_val": self.base_val, "history": self.history,
                "best": self.best, "data_position": data_position(self.epoch, self.micro_batch, batch_size)}


def _optimizer(model: Any, cfg: TrainConfig, prec: Any, notify: bool = True) -> Any:
    """The run's optimizer (`vrp.train.optim.build_optimizer`: a paged one becomes its CPU equivalent on a CPU,
    with a notice when `notify`)."""

    return build_optimizer(model, cfg.optimizer, prec.device, cfg.learning_rate, cfg.weight_decay, notify)


class _Videos:
    """The first `limit` videos (0 = all) of a split, read again from the file at each iteration
    (`vrp.token_cache.split_videos`), for what scans a split without holding it (tier sources, frequent comments)."""

    def __init__(self, data: DatasetDir, split: str, limit: int) -> None:
        self.data, self.split, self.limit = data, split, limit

    def __iter__(self) -> Iterator[Any]:
        return split_videos(self.data, self.split, self.limit)


def _encodings(cfg: TrainConfig, data: DatasetDir, tok: Any, tiers: TierSettings | None, data_sha: str,
               progress: bool) -> tuple[Sequence[Any], Sequence[Any]]:
    """The training and validation encodings (cut to `max_train_videos` / `max_eval_videos`): memory-mapped from the
    dataset's token cache (`vrp.token_cache.cached_split`), or lists computed in memory with `token_cache` off.
    Raises VrpError naming the file for an empty training split or a video without a comment."""
    pcfg = cfg.prompt_config()
    cuts = (("train", cfg.max_train_videos), ("validation", cfg.max_eval_videos))
    if cfg.token_cache:  # tokenized once per dataset, tokenizer and prompt settings
        train_enc, val_enc = (cached_split(data, split, n, tok, pcfg, tiers, data_sha, progress) for split, n in cuts)
    else:
        with gc_paused():  # millions of token-id lists, no cycles
            train_enc, val_enc = (list(encode_split(tok, split_videos(data, split, n), pcfg, tiers, split == "train"))
                                  for split, n in cuts)
    if not len(train_enc):
        raise VrpError(f"{data.train_path}: empty dataset")
    return train_enc, val_enc


def _inputs(cfg: TrainConfig, data: DatasetDir) -> list[tuple[str, Any]]:
    """The command's inputs that `overwrite` must never delete (`RunDir.check_replaceable`)."""
    return [("data", data.path), ("model", cfg.model)]


def _check_resumed_total(cfg: TrainConfig, run: RunDir) -> None:
    """Raise ConfigError naming the option when a resume changes an option a resumed run may not change
    (`vrp.train.config.check_resumable`), or ConfigError('max_steps' / 'epochs') when it changes the run's length while its learning-rate
    schedule depends on it: the schedule was fixed for the old total, so the resumed steps would follow neither the old
    nor a fresh run's schedule."""

    old = build_config(TrainConfig, run.config(), {}, where=str(run.config_path))
    check_resumable(old, cfg, str(run.config_path))
    field = ("max_steps" if old.max_steps != cfg.max_steps
             else "epochs" if cfg.max_steps < 0 and old.epochs != cfg.epochs else None)
    if field is not None and old.schedule_uses_total():
        raise ConfigError(field, f"cannot change when resuming ({getattr(old, field)} -> {getattr(cfg, field)}): the "
                                 f"run's `lr_scheduler` {old.lr_scheduler!r} (warmup included) was laid out over its "
                                 f"total steps when it started, so a resumed run of another length would follow "
                                 f"another schedule than a fresh run of that length; resume with the same length, or "
                                 f"start a new run with the length you want (a `constant` schedule can be extended)")


def _check_run(cfg: TrainConfig, run: RunDir, data: DatasetDir, resume: bool, overwrite: bool,
               inputs: list[tuple[str, Any]]) -> tuple[str, dict[str, Any] | None]:
    """`(the data's fingerprint, the state.json of the checkpoint a resume starts from, or None)`. Raises ConfigError
    for a run dir that may not be written or data that differs from the resumed run's."""
    run.check_target(resume, overwrite, inputs)
    if resume:
        _check_resumed_total(cfg, run)
    data_sha = data.fingerprint()
    if not resume:
        return data_sha, None

    ckpt, skipped = resume_checkpoint(run)
    for problem in skipped:  # a damaged newer checkpoint: said, and passed over for the newest sound one
        print(f"warning: {problem}; the checkpoint is passed over", file=sys.stderr, flush=True)
    if ckpt is not None:
        saved = run.checkpoint_state(ckpt)
        if saved.get("data_sha256") and saved["data_sha256"] != data_sha:
            raise ConfigError("data", f"{data} is not the data this run was trained on (its train.jsonl/"
                                      f"validation.jsonl changed); resume with the same data or start a new run")
        return data_sha, saved
    return data_sha, None


def _create_run(run: RunDir, cfg: TrainConfig, resume: bool, overwrite: bool,
                inputs: list[tuple[str, Any]]) -> None:
    run.create(resume, overwrite, inputs)
    run.save_config(cfg)  # on resume: the options it continues with (a longer `max_steps`, another `max_memory`)


def _check_not_done(run: RunDir, step: int, total_steps: int) -> None:
    """Raise ConfigError('max_steps') when a resume has nothing to do (its checkpoint is past the total, or at it in a
    finished run), so that nothing in the run dir is rewritten; a run killed after its last checkpoint but before its
    final files still resumes to write them."""
    if step > total_steps or (step == total_steps and run.metrics_path.is_file() and run.adapter_dir.is_dir()):
        raise ConfigError("max_steps", f"{run.path} is already at step {step} of {total_steps}: nothing to resume; "
                                       f"the run is left as it is")


def setup(cfg: TrainConfig, data: DatasetDir, run: RunDir, resume: bool, overwrite: bool,
          lock: Any = None, progress: bool = True) -> TrainSetup:
    """Check everything, load and wrap the model, build optimizer and schedule, then create the run dir (emptied
    with `overwrite`) and save `config.yaml` (not on resume). Raises ConfigError / VrpError before anything is
    written: a bad run dir, data that differs from a resumed run's, an impossible precision, an unloadable model,
    a prompt longer than the model's context, unknown LoRA target modules. `lock` (`vrp.locks.DirLock` of the run
    dir, released by the caller): taken by rank 0 before the run dir is looked at, so that a second writer (a
    resume, an `overwrite`) is refused while this one runs (ConfigError('out')). The videos are tokenized through
    the dataset's token cache (`vrp.token_cache`; in memory with `token_cache` off), with a progress bar on rank 0
    while it is built when `progress`."""
    import torch
    from transformers import get_scheduler

    cfg = replace(cfg, **{k: resolve_path_option(getattr(cfg, k)) for k in PATH_OPTIONS})
    if not data.train_path.is_file():
        data.train_videos()  # raises ConfigError('data') naming the missing file
    prec = resolve_precision(cfg.precision, cfg.quantization, cfg.device)
    if cfg.compile_layers:  # an optional capability: checked before the model is loaded and anything is written

        check_compiler(prec.device)
    resolve_optimizer(cfg.optimizer, prec.device)  # a missing bitsandbytes is named before anything is loaded
    # a launched run (torchrun, accelerate launch) joins its process group; only rank 0 reads and writes the run dir
    dist = start(cfg.distributed_strategy, cfg.quantization, prec.device)
    if lock is not None:
        dist.main_only(lock.acquire)  # rank 0 alone writes the run dir
    data_sha, saved = dist.main_only(_check_run, cfg, run, data, resume, overwrite, _inputs(cfg, data))
    train_videos = _Videos(data, "train", cfg.max_train_videos)  # read when scanned, never held
    if cfg.tiers:  # checked before anything is loaded or written; config.yaml records the resolved source

        cfg = replace(cfg, tier_source=resolve_tier_source(cfg.tier_source, train_videos, dataset_format(data)))
    torch.manual_seed(cfg.seed)

    model, tok = load_base_model(cfg.model, prec, cfg.attn_implementation)
    # `auto` becomes chat or plain (said once); config.yaml records it for generate, evaluate and serve
    cfg = resolve_prompt_config(tok, cfg, announce=dist.is_main, model=cfg.model)
    marker = longest_marker(tok) if cfg.tiers else 0
    check_context(model, cfg.model, cfg.max_prompt_tokens + cfg.max_comment_tokens + 1 + marker,
                  "`max_prompt_tokens` + `max_comment_tokens` + 1" + (" + the tier marker" if marker else ""))
    pcfg = cfg.prompt_config()
    # validation rows carry every tiered comment's true marker (no dropout)
    tiers = TierSettings(cfg.tier_source, cfg.tier_marker_dropout, cfg.seed) if cfg.tiers else None
    train_enc, val_enc = _encodings(cfg, data, tok, tiers, data_sha, progress and dist.is_main)
    rows = make_rows(train_enc, cfg.packing, cfg.max_row_tokens)
    val_packing = validation_packing(model, cfg.packing)  # refuses shared_prefix where masks cannot be exact
    val_rows = make_rows(val_enc, val_packing, cfg.max_row_tokens)
    n_batches = len(micro_batches(rows, cfg.batch_size))
    per_step = cfg.grad_accum * dist.world_size  # micro-batches of one optimizer step, all processes together
    per_epoch = math.ceil(n_batches / per_step)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * per_epoch
    if cfg.max_steps < 0 and saved is not None:  # resumed, maybe by another number of processes
        at = position_of(saved, n_batches, cfg.grad_accum, cfg.batch_size)
        total_steps = int(saved["step"]) + steps_until(*at, n_batches, per_step, cfg.epochs)
    if saved is not None:
        dist.main_only(_check_not_done, run, int(saved["step"]), total_steps)  # rank 0 reads the run dir
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)

    model = attach_lora(model, cfg.lora(), prec, cfg.gradient_checkpointing)
    # before the first step: packed log-probs == per-example ones on this very model (VrpError when not)
    checked = packing_check(model, rows, tok.pad_token_id, prec) if cfg.packing == "shared_prefix" else None
    if checked is not None and dist.is_main:
        print(f"packing check: max |difference| of {checked['n_tokens']} comment-token log-probs packed vs per "
              f"example {checked['max_abs_diff']:.2g} nats (tolerance {checked['tolerance']:g} at "
              f"{checked['dtype']})", file=sys.stderr, flush=True)
    # measured on the whole model before DDP / FSDP wrap it (its forward + backward would bypass their hooks)
    plan = plan_memory(model, rows, tok.pad_token_id, cfg, prec) if cfg.max_memory else None
    if cfg.compile_layers:  # after the memory probe, which should not pay for the compilation

        compile_decoder_layers(model)
    dist.seed_rank(cfg.seed)
    dist.wrap(model)  # DDP / FSDP2 in a launched run; the optimizer must see FSDP's sharded parameters
    optimizer = _optimizer(model, cfg, prec, dist.is_main)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    # the probes call the model directly, which FSDP's sharded weights do not allow
    probes = (build_probe_set(tok, list(split_videos(data, "validation", min(cfg.max_eval_videos or cfg.curve_videos,
                                                                             cfg.curve_videos))),
                              train_videos, pcfg, cfg.curve_videos, cfg.seed, prompts=val_enc)
              if dist.strategy != "fsdp" and cfg.curve_videos else None)
    dist.main_only(_create_run, run, cfg, resume, overwrite, _inputs(cfg, data))
    return TrainSetup(cfg, run, data_sha, prec, model, tok, len(train_enc), len(val_enc), rows, val_rows, optimizer,
                      scheduler, per_epoch, total_steps, probes, dist, plan, val_packing=val_packing,
                      packing_check=checked)


def starting_state(s: TrainSetup, resume: bool, progress: bool) -> TrainState:
    """The state a run continues from: its newest checkpoint on resume (adapter, optimizer, scheduler and RNG states
    restored, and the best validation so far, `vrp.train.checkpoint.resumed_best`), else step 0 with the base model's
    validation row (NLL and learning-curve probes, `vrp.train.probes.validate`) when there are validation rows, which
    is also the first best checkpoint."""

    ckpt, skipped = s.dist.main_only(resume_checkpoint, s.run) if resume else (None, [])
    if resume and s.dist.is_main:  # say where a resumed run continues from
        where = (f"checkpoint {ckpt.name}" + (", the newest sound one" if skipped else "") if ckpt is not None
                 else "step 0 (the run has no " + ("sound" if skipped else "complete") + " checkpoint yet)")
        print(f"resuming {s.run.path} from {where}", file=sys.stderr, flush=True)
    if ckpt is not None:
        st = load_checkpoint(ckpt, s.model, s.optimizer, s.scheduler, s.dist)
        epoch, micro = position_of(st, len(micro_batches(s.rows, s.cfg.batch_size)), s.cfg.grad_accum,
                                   s.cfg.batch_size)
        return TrainState(st["step"], st["comments_seen"], st["tokens_seen"], st["train_seconds"],
                          st.get("base_val"), st["history"], resumed_best(s.run, st.get("best")), epoch, micro)
    state = TrainState()
    if s.val_rows:
        state.base_val, row = validate(s, progress)
        state.history.append({"step": 0, "comments_seen": 0, **row})
        view = s.dist.adapter_view(s.model)  # every rank: FSDP gathers the LoRA weights
        if s.dist.is_main:
            state.best = keep_best(s.run, None, 0, row["val_nll"], view)
    return state
