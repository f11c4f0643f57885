"""Charts as PNG files (matplotlib, Agg backend, no display), written atomically.

Knows: the training curve of a run (`loss_curve`: training loss per optimizer step and validation NLL per comment
token, from a run's history rows), drawn once here for `vrp train` (RUN/loss.png) and `vrp evaluate` (a run whose
loss.png is missing), the learning curve of a run (`learning_curve`: its validation metrics against training
comments seen, RUN/curve.png), and grouped bar charts with optional error bars and a reference line (`bar_chart`).
Does not know: where the numbers come from.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

from vrp.files import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    _pyplot().close(fig)


def loss_curve(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Plot training loss (rows with `loss`) and validation NLL (rows with `val_nll`) per optimizer `step`, in nats
    per comment token, to the PNG `path`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    tr = [(h["step"], h["loss"]) for h in history if h.get("loss") is not None]
    va = [(h["step"], h["val_nll"]) for h in history if h.get("val_nll") is not None]
    if tr:
        ax.plot(*zip(*tr), label="train loss (NLL/token)", alpha=0.8)
    if va:
        ax.plot(*zip(*va), "o-", label="validation NLL/token")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("nats per comment token")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=100)


CURVE_PANELS = (  # (title, y label, [(history key, legend)], random-baseline key of `baselines` or None)
    ("validation NLL (validation videos, up to max_eval_videos)", "nats per comment token", [("val_nll", None)], None),
    ("conditioning gain", "nats per comment token", [("val_gain", None)], "no_gain"),
    ("Recall@10 of real comments", "Recall@10", [("val_recall_at_10", "likelihood"),
                                                 ("val_pmi_recall_at_10", "PMI")], "random_recall_at_10"),
    ("MRR of real comments", "MRR", [("val_mrr", "likelihood"), ("val_pmi_mrr", "PMI")], "random_mrr"),
    ("sampled comments that end", "finished rate", [("val_finished_rate", None)], None),
    ("median length of sampled comments", "new tokens", [("val_median_new_tokens", None)], None),
)


def learning_curve(history: Sequence[dict[str, Any]], path: Path, baselines: dict[str, Any] | None = None) -> None:
    """Plot the learning curve of a run, one panel per validation metric of `CURVE_PANELS` against `comments_seen`
    (the training comments seen so far), to the PNG `path`. history: rows with `comments_seen` and `val_*` keys
    (`vrp.train.probes`); a metric no row has is drawn as an empty panel. baselines: `random_recall_at_10` and
    `random_mrr` (the ranking's random level), drawn as dashed lines, as is a gain of 0 (no use of the video)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, ylabel, series, base) in zip(axes.flat, CURVE_PANELS):
        for key, label in series:
            pts = [(h.get("comments_seen", h.get("step")), h[key]) for h in history if h.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", markersize=3, label=label)
        levels = {"no_gain": 0.0, **(baselines or {})}
        if base and levels.get(base) is not None:
            ax.axhline(levels[base], color="k", linestyle="--", linewidth=1,
                       label="no use of the video" if base == "no_gain" else "random")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training comments seen")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and (len(series) > 1 or base):  # nothing labelled: no empty legend
            ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=90)


def bar_chart(path: Path, labels: Sequence[str], series: dict[str, Sequence[float | None]], title: str,
              ylabel: str, errors: dict[str, Sequence[tuple[float, float] | None]] | None = None,
              hline: tuple[float, str] | None = None) -> None:
    """Write a (grouped) bar chart PNG atomically: one group per label, one bar per series; None values are gaps.

    errors: per series, `(lower, upper)` interval per label (drawn as error bars). hline: `(y, legend label)`.
    """
    import numpy as np

    plt = _pyplot()

    n = max(len(series), 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(labels) * max(1, n / 2) + 2), 4))
    x = np.arange(len(labels))
    for si, (name, vals) in enumerate(series.items()):
        ys = [np.nan if v is None else float(v) for v in vals]
        yerr = None
        if errors and errors.get(name):
            yerr = np.array([[y - lo, hi - y] if e else [0, 0] for y, e in zip(ys, errors[name])
                             for lo, hi in [e or (0, 0)]]).T
        ax.bar(x + (si - (n - 1) / 2) * width, ys, width, label=name, yerr=yerr, capsize=3)
    if hline:
        ax.axhline(hline[0], color="k", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, 60), fontsize=10)
    if len(series) > 1 or hline:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=110)
