"""The run directory `vrp train` writes and every later stage reads: `RunDir`.

Knows: a run dir's file names and layout, what "the latest checkpoint" of a run is (the newest complete one, a
`checkpoints/step-NNNNNN/` holding its `state.json`) and the best one (`checkpoints/best-NNNNNN/`), how the run's
`config.yaml` is read (once per object, cached) and turned into its base model and prompt settings, how the run dir
is created (never over a directory that is not a run, `vrp.artifacts._Dir.check_replaceable`; a run that never
reached a checkpoint may be started over, `never_trained`) and how its metrics files are written; and what makes
each file it reads back damaged (an empty or model-less config.yaml, a state.json or metrics.json that is not the
JSON object vrp writes, an adapter whose safetensors header does not cover its file, `check_adapter`).
Does not know: how a run is trained (`vrp.train`), scored or served; the other directories (`vrp.artifacts`); which
writer holds the dir (`vrp.locks`).
Errors: a missing or wrong run is a `ConfigError` naming the argument that gave it (`run`, `checkpoint`, `out`); a
damaged file is a `VrpError` naming the file and what is wrong with it, in one line.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from vrp.artifacts import _Dir, _In
from vrp.errors import ConfigError, VrpError
from vrp.files import (
    check_writable,
    iter_jsonl_rows,
    loads_json,
    read_json_object,
    write_json_atomic,
    write_jsonl_atomic,
)
from vrp.locks import LOCK_NAME
from vrp.options import coerce_values, load_yaml, save_config
from vrp.prompts import PromptConfig


class RunDir(_Dir):
    """What `vrp train` writes: `config.yaml` (the resolved `TrainConfig`), `adapter/` (PEFT adapter + tokenizer),
    `checkpoints/step-NNNNNN/{adapter/, optimizer.pt, scheduler.pt, rng.pt, state.json}`, the best checkpoint by
    validation NLL `checkpoints/best-NNNNNN/{adapter/, state.json}` (one, the newest complete one counts),
    `metrics.json` (final), `metrics.jsonl` (a step-0 validation line, then one line per optimizer step),
    `logs/` (TensorBoard), `loss.png` and `curve.png` (the learning curve).

    `adapter/` is the last step's adapter; `checkpoint` (e.g. `best`) makes `adapter()` without an argument give that
    checkpoint's adapter instead (how `vrp evaluate --checkpoint` reaches every `--run`)."""

    CONFIG, ADAPTER, CHECKPOINTS, STATE = "config.yaml", "adapter", "checkpoints", "state.json"
    METRICS, HISTORY, LOGS, LOSS_PNG, CURVE_PNG = "metrics.json", "metrics.jsonl", "logs", "loss.png", "curve.png"
    BEST_PREFIX = "best-"
    KIND, MARKERS = "run", (CONFIG, CHECKPOINTS)
    # Named checkpoints besides `step-NNNNNN`: name -> the checkpoint dir it stands for (None: the run has none).
    NAMED_CHECKPOINTS: dict[str, Callable[[RunDir], Path | None]] = {
        "latest": lambda run: run.latest_checkpoint(),
        "best": lambda run: run.best_checkpoint(),
    }

    def __init__(self, path: str | os.PathLike[str], checkpoint: str | None = None) -> None:
        super().__init__(path)
        self.checkpoint = checkpoint
        self._config: dict[str, Any] | None = None

    config_path, adapter_dir, checkpoints_dir = _In(CONFIG), _In(ADAPTER), _In(CHECKPOINTS)
    metrics_path, history_path, logs_dir, loss_png = _In(METRICS), _In(HISTORY), _In(LOGS), _In(LOSS_PNG)
    curve_png = _In(CURVE_PNG)

    def exists(self) -> bool:
        """True when the path holds a `config.yaml` (a run was started here)."""
        return self.config_path.is_file()

    def never_trained(self) -> bool:
        """True for a run that was started but holds nothing a resume could continue or a later stage could use: a
        `config.yaml`, but no complete step checkpoint, no `adapter/` and no `metrics.json` (a start that failed
        after writing its config, e.g. at its first forward pass, or was stopped before its first checkpoint; a
        resume would start it over from step 0 too). A new run may replace it without `overwrite`."""
        return (self.exists() and not self.checkpoints() and not self.adapter_dir.exists()
                and not self.metrics_path.exists())

    # reading
    def config(self) -> dict[str, Any]:
        """The `config.yaml` mapping, read once. Raises ConfigError('run') when there is none, VrpError naming the
        file when it is not a YAML mapping, or when it is damaged: empty, or without the base model (`model`, which
        vrp always writes) - read as defaults, such a file would put the run's adapter on another model."""
        if self._config is None:
            if not self.exists():
                raise ConfigError("run", f"{self.path} is not a vrp run directory (no {self.CONFIG})")
            saved = load_yaml(self.config_path)
            damaged = f"{self.config_path}: damaged run config"
            if not saved:
                raise VrpError(f"{damaged} (the file holds no options; vrp writes every option the run was trained "
                               f"with); restore it, or start a new run")
            model = saved.get("model")
            if not isinstance(model, str) or not model.strip():
                raise VrpError(f"{damaged} (option 'model', the base model the adapter belongs to, is "
                               f"{'missing' if model is None else f'not a model name: {model!r}'}); restore it, or "
                               f"start a new run")
            self._config = saved
        return self._config

    def model_spec(self) -> str:
        """The base model the run was trained on (`model` in config.yaml, which `config` checks)."""
        return str(self.config()["model"])

    def prompt_config(self, max_prompt_tokens: int | None = None) -> Any:
        """The `PromptConfig` the run was trained with (its `max_prompt_tokens`, `truncation`, `prompt_format`: `chat`
        for a run written before prompt formats existed, which was trained with its chat template),
        `max_prompt_tokens` overriding when given. Raises VrpError naming config.yaml and the option for a value of the
        wrong type or one `PromptConfig` refuses (`max_prompt_tokens: 5`, `prompt_format: weird`): the saved value
        is no flag of the command, so the error must not name one."""

        saved = {"prompt_format": "chat", **self.config()}
        kw = coerce_values(PromptConfig, {k: saved[k] for k in ("max_prompt_tokens", "truncation", "prompt_format")
                                          if k in saved}, str(self.config_path))
        try:
            PromptConfig(**kw)  # the saved values alone, so that their error names the file
        except ConfigError as e:
            raise VrpError(f"{self.config_path}: option '{e.field}': {e.message}") from None
        if max_prompt_tokens:
            kw["max_prompt_tokens"] = max_prompt_tokens
        return PromptConfig(**kw)

    def checkpoint_dir(self, step: int) -> Path:
        """Where the checkpoint of optimizer step `step` lives (`checkpoints/step-000050`)."""
        return self.checkpoints_dir / f"step-{step:06d}"

    def checkpoints(self) -> list[Path]:
        """The complete checkpoints (those with their `state.json`), oldest first."""
        return sorted(p for p in self.checkpoints_dir.glob("step-*") if (p / self.STATE).is_file())

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        done = self.checkpoints()
        return done[-1] if done else None

    def best_checkpoint_dir(self, step: int) -> Path:
        """Where the best checkpoint is kept when it is that of step `step` (`checkpoints/best-000050`)."""
        return self.checkpoints_dir / f"{self.BEST_PREFIX}{step:06d}"

    def best_checkpoint(self) -> Path | None:
        """The best checkpoint by validation NLL (the newest complete `best-NNNNNN`: a new best is written before
        the old one is removed), or None."""
        done = sorted(p for p in self.checkpoints_dir.glob(f"{self.BEST_PREFIX}*") if (p / self.STATE).is_file())
        return done[-1] if done else None

    def checkpoint_state(self, ckpt: Path) -> dict[str, Any]:
        """The `state.json` of checkpoint `ckpt` (step, counters, data fingerprint, history). Raises VrpError naming
        the file when it is not a JSON object with an integer `step` (and, for `step-NNNNNN` / `best-NNNNNN`, the
        step of its name)."""
        path = ckpt / self.STATE
        state = read_json_object(path, "checkpoint state")
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise VrpError(f"{path}: damaged checkpoint state ('step' is {'missing' if step is None else repr(step)})")
        named = ckpt.name.rsplit("-", 1)[-1]
        if named.isdigit() and int(named) != step:
            raise VrpError(f"{path}: damaged checkpoint state (step {step} in the checkpoint of step {int(named)})")
        return state

    def adapter(self, checkpoint: str | None = None) -> Path:
        """The adapter dir: that of checkpoint `checkpoint` (`step-000050`, or a name of `NAMED_CHECKPOINTS`: `latest`,
        `best`), by default the dir's own `checkpoint`, and `adapter/` (the last step's) when both are None. Raises
        ConfigError('run' / 'checkpoint') when it is missing."""
        checkpoint = checkpoint or self.checkpoint
        if checkpoint is None:
            if not self.adapter_dir.is_dir():
                self.config()  # not a run at all: say so
                raise ConfigError("run", f"{self.path} has no {self.ADAPTER}/ (training not finished?); use "
                                         f"`checkpoint` latest")
            return self.adapter_dir
        done = self.checkpoints()
        named = self.NAMED_CHECKPOINTS.get(checkpoint)
        ckpt = named(self) if named else next((p for p in done if p.name == checkpoint), None)
        if ckpt is None or not (ckpt / self.ADAPTER).is_dir():
            there = [p.name for p in done] + [n for n, find in self.NAMED_CHECKPOINTS.items() if find(self)]
            raise ConfigError("checkpoint", f"{checkpoint} not found in {self.checkpoints_dir}; available: {there}")
        return ckpt / self.ADAPTER

    def history(self) -> list[dict[str, Any]]:
        """The rows of `metrics.jsonl` (`step`, `loss`, `lr`, ..., `val_nll` on validation steps); a torn last
        line (a kill while writing) is left out. [] when there is no file."""
        if not self.history_path.is_file():
            return []
        return [row for _, row in iter_jsonl_rows(self.history_path) if row is not None]

    def metrics(self) -> dict[str, Any] | None:
        """`metrics.json` (written when training finished), or None. Raises VrpError naming the file when it is
        not a JSON object."""
        if not self.metrics_path.is_file():
            return None
        try:
            m = loads_json(self.metrics_path.read_text(encoding="utf-8"), str(self.metrics_path))
        except UnicodeDecodeError as e:
            raise VrpError(f"{self.metrics_path}: not UTF-8 text (bad byte at offset {e.start})") from None
        if not isinstance(m, dict):
            raise VrpError(f"{self.metrics_path}: damaged (expected a JSON object, got {type(m).__name__})")
        return m

    # writing
    def check_target(self, resume: bool, overwrite: bool,
                     inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> None:
        """Raise ConfigError when the dir cannot be used as asked (a new run needs an absent or empty dir, a run dir
        that `never_trained`, or `overwrite` of a run dir; the last two only where `check_replaceable(inputs)` allows;
        `resume` needs a run); changes nothing, so a failure later leaves no trace."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError("out", f"{self.path} exists and is not a directory")
        if self.is_nonempty():
            if resume and not self.exists():
                raise ConfigError("resume", f"{self.path} is not a vrp run directory (no {self.CONFIG})")
            if not resume and not overwrite:
                if not self.is_recognised():
                    raise ConfigError("out", f"{self.path} is not empty and is not a run directory (no "
                                             f"{self._what_marks_it()}); choose another directory")
                if not self.never_trained():
                    raise ConfigError("out", f"{self.path} is a run directory that is not empty; pass `resume` to "
                                             f"continue it or `overwrite` to start over")
            if not resume:
                self.check_replaceable(inputs)
        elif resume:
            raise ConfigError("resume", f"{self.path} has no run to resume")
        check_writable(self.path, "out")

    def create(self, resume: bool, overwrite: bool,
               inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> None:
        """`check_target` again, then empty the dir when overwriting a run and create it. Emptying moves every entry
        but the lock file (`vrp.locks.LOCK_NAME`, which the writing command holds: the dir itself stays, so no other
        command can take it meanwhile) into a sibling `.NAME.old-*` dir, deleted once all are moved: a failure
        leaves whole files and dirs, in the run dir or in that one, never a half-deleted file."""
        self.check_target(resume, overwrite, inputs)
        if self.is_nonempty() and not resume:  # overwrite, or a run that never trained (checked above)
            import sys
            import tempfile

            if not overwrite:
                print(f"note: {self.path} holds a run that never reached a checkpoint (a start that failed or was "
                      f"stopped); starting over", file=sys.stderr, flush=True)

            aside = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.absolute().parent))
            try:
                for entry in list(self.path.iterdir()):
                    if entry.name != LOCK_NAME:
                        os.replace(entry, aside / entry.name)
            except OSError as e:
                raise VrpError(f"{self.path}: cannot empty the run dir ({e.strerror or e}); what was moved out is in "
                               f"{aside}") from None
            shutil.rmtree(aside)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError("out", f"cannot create {self.path} ({e.strerror or e})") from None
        self._config = None

    def save_config(self, cfg: Any) -> None:
        """Write the resolved config dataclass as `config.yaml`."""

        save_config(cfg, self.config_path)
        self._config = None

    def save_adapter(self, model: Any, tokenizer: Any, dest: Path | None = None) -> None:
        """Save a PEFT model's adapter and the tokenizer to `dest` (default `adapter/`) via a temporary sibling
        directory, so that a kill while saving never leaves a half-written adapter that would be loaded."""
        dest = dest or self.adapter_dir
        tmp = dest.with_name(f".tmp-{dest.name}")
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)

    def restart_history(self, rows: Iterable[dict[str, Any]]) -> Any:
        """Rewrite `metrics.jsonl` with `rows` (atomically) and return it opened for appending one line per step."""
        write_jsonl_atomic(self.history_path, rows)
        return open(self.history_path, "a", encoding="utf-8")

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json_atomic(self.metrics_path, metrics)


def check_adapter(adapter_dir: Path) -> None:
    """Raise VrpError naming the file when the PEFT adapter in `adapter_dir` is damaged: `adapter_config.json` not a
    JSON object, or `adapter_model.safetensors` missing or not a whole safetensors file (its header's offsets must
    cover the file, so a truncated one fails; the tensors are not read). An adapter saved as `adapter_model.bin`
    (older PEFT) is left to PEFT."""
    from safetensors import SafetensorError, safe_open

    cfg_path = adapter_dir / "adapter_config.json"
    read_json_object(cfg_path, "adapter config")  # VrpError naming the file when it is not a JSON object
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        if (adapter_dir / "adapter_model.bin").is_file():
            return
        raise VrpError(f"{weights}: missing (the adapter has no weights)")
    try:
        with safe_open(str(weights), "pt"):
            pass
    except (SafetensorError, OSError) as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise VrpError(f"{weights}: damaged adapter weights ({lines[0] if lines else type(e).__name__})") from None


def prompt_settings(run: RunDir | None, max_prompt_tokens: int | None = None) -> PromptConfig:
    """The prompt settings of a model: the run's (`RunDir.prompt_config`, with the prompt format it was trained in),
    else the defaults with prompt format `auto` (resolved once the tokenizer is loaded,
    `vrp.prompt_format.resolve_prompt_config`); `max_prompt_tokens` overrides the budget when given. Used by
    generate, evaluate and serve alike."""
    if run is not None:
        return run.prompt_config(max_prompt_tokens)
    return PromptConfig(prompt_format="auto",
                        **({"max_prompt_tokens": max_prompt_tokens} if max_prompt_tokens else {}))
