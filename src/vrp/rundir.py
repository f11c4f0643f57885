"""The run directory `vrp train` writes and every later stage reads: `RunDir`.

Knows: a run dir's file names and layout, what "the latest checkpoint" of a run is (the newest complete one, a
`checkpoints/step-NNNNNN/` holding its `state.json`) and the best one (`checkpoints/best-NNNNNN/`), how the run's
`config.yaml` is read (once per object, cached) and turned into its base model and prompt settings, how the run dir
is created (never over a directory that is not a run, `vrp.artifacts._Dir.check_replaceable`) and how its metrics
files are written.
Does not know: how a run is trained (`vrp.train`), scored or served; the other directories (`vrp.artifacts`).
Errors: a missing or wrong run is a `ConfigError` naming the argument that gave it (`run`, `checkpoint`, `out`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from vrp.artifacts import _Dir, _In
from vrp.errors import ConfigError, VrpError
from vrp.io import check_writable, iter_jsonl_rows, write_json_atomic, write_jsonl_atomic


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

    # reading
    def config(self) -> dict[str, Any]:
        """The `config.yaml` mapping, read once. Raises ConfigError('run') when there is none, VrpError naming the
        file when it is not a YAML mapping."""
        if self._config is None:
            from vrp.options import load_yaml

            if not self.exists():
                raise ConfigError("run", f"{self.path} is not a vrp run directory (no {self.CONFIG})")
            self._config = load_yaml(self.config_path)
        return self._config

    def model_spec(self) -> str:
        """The base model the run was trained on (`model` in config.yaml)."""
        spec = self.config().get("model") or "smollm2-135m"
        if not isinstance(spec, str):
            raise VrpError(f"{self.config_path}: option 'model' must be a string, got {spec!r}")
        return spec

    def prompt_config(self, max_prompt_tokens: int | None = None) -> Any:
        """The `PromptConfig` the run was trained with (its `max_prompt_tokens`, `truncation`), `max_prompt_tokens`
        overriding when given. Raises VrpError naming config.yaml for a value of the wrong type."""
        from vrp.options import coerce_values
        from vrp.prompts import PromptConfig

        saved = self.config()
        kw = coerce_values(PromptConfig, {k: saved[k] for k in ("max_prompt_tokens", "truncation") if k in saved},
                           str(self.config_path))
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
        """The `state.json` of checkpoint `ckpt` (step, counters, data fingerprint, history)."""
        return json.loads((ckpt / self.STATE).read_text())

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
        """`metrics.json` (written when training finished), or None."""
        return json.loads(self.metrics_path.read_text()) if self.metrics_path.is_file() else None

    # writing
    def check_target(self, resume: bool, overwrite: bool,
                     inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> None:
        """Raise ConfigError when the dir cannot be used as asked (a new run needs an absent or empty dir, or
        `overwrite` of a run dir that `check_replaceable(inputs)` allows; `resume` needs a run); changes nothing, so
        a failure later leaves no trace."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError("out", f"{self.path} exists and is not a directory")
        if self.is_nonempty():
            if resume and not self.exists():
                raise ConfigError("resume", f"{self.path} is not a vrp run directory (no {self.CONFIG})")
            if not resume and not overwrite:
                if not self.is_recognised():
                    raise ConfigError("out", f"{self.path} is not empty and is not a run directory (no "
                                             f"{self._what_marks_it()}); choose another directory")
                raise ConfigError("out", f"{self.path} is a run directory that is not empty; pass `resume` to "
                                         f"continue it or `overwrite` to start over")
            if not resume:
                self.check_replaceable(inputs)
        elif resume:
            raise ConfigError("resume", f"{self.path} has no run to resume")
        check_writable(self.path, "out")

    def create(self, resume: bool, overwrite: bool,
               inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> None:
        """`check_target` again, then replace the dir when overwriting a run (the old one is renamed aside first and
        deleted only once the name is free, so a failure never leaves a half-deleted run) and create it."""
        self.check_target(resume, overwrite, inputs)
        if self.is_nonempty() and not resume:  # overwrite (checked above)
            import tempfile

            aside = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.absolute().parent))
            os.replace(self.path, aside / self.path.name)
            shutil.rmtree(aside)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError("out", f"cannot create {self.path} ({e.strerror or e})") from None
        self._config = None

    def save_config(self, cfg: Any) -> None:
        """Write the resolved config dataclass as `config.yaml`."""
        from vrp.options import save_config

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
