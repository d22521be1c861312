"""The report's figures. The plot_* functions draw from plain data (lists of (epoch, value) pairs, dicts), so each
can be read and tested without MLflow; `make_figures` decides which ones the searches' data allows. Accuracies
come in as fractions and are drawn in percent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window: the report runs on headless machines
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from tuner.report.gaps import MODELS, TRAINERS, in_order
from tuner.report.importance import param_importances
from tuner.text import plural
from tuner.tracking.block_figure import plot_blocks, save_figure, trainer_color
from tuner.trial.metric_names import block_accuracies

# how each trial outcome is marked in the search-history figure
OUTCOME_MARKERS: dict[str, dict[str, Any]] = {  # matplotlib's marker keyword arguments
    "completed": dict(marker="o", color="tab:blue"),
    "stopped": dict(marker="v", color="tab:gray"),
    "running": dict(marker="o", color="tab:cyan", markerfacecolor="none"),
    "diverged": dict(marker="X", color="tab:red"),
    "failed": dict(marker="s", color="tab:purple"),
}
OUTCOME_LABELS = {
    "completed": "completed",
    "stopped": "stopped by ASHA",
    "running": "still running",
    "diverged": "diverged",
    "failed": "failed",
}


def plot_curves(model: str, series: dict, path) -> None:
    """Loss and accuracy per epoch of the best trial of each trainer.

    series: {trainer: {"label": legend text, "train_loss": [(epoch, v)], "val_loss": ..., "train_acc": ...,
    "val_acc": ...}}; a missing metric leaves its panel without that trainer's line.
    """
    panels = [
        ("train_loss", "Training loss", "cross-entropy"),
        ("val_loss", "Validation loss", "cross-entropy"),
        ("train_acc", "Training accuracy", "accuracy (%)"),
        ("val_acc", "Validation accuracy", "accuracy (%)"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for ax, (key, title, ylabel) in zip(axes.flat, panels):
        scale = 100.0 if key.endswith("_acc") else 1.0
        for trainer, s in series.items():
            points = s.get(key) or []
            if points:
                ax.plot(
                    [e for e, _ in points],
                    [v * scale for _, v in points],
                    color=trainer_color(trainer),
                    marker="." if len(points) < 30 else None,
                    label=s["label"],
                )
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = [], []
    for ax in axes.flat:  # every trainer that appears in any panel, once
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    # one legend for the whole figure, below the panels, so it never covers a curve
    legend_rows = math.ceil(max(len(labels), 1) / 2)
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False, bbox_to_anchor=(0.5, 0))
    fig.suptitle(f"{model}: best trial of each trainer (CIFAR-10)", fontsize=13)
    fig.tight_layout(rect=(0, 0.01 + 0.035 * legend_rows, 1, 1))
    save_figure(fig, path)


def plot_history(experiment: str, trials: list, path, search_starts: tuple = ()) -> None:
    """Each trial's final validation accuracy in the order the trials started, and the best so far.

    trials: [(outcome, final val_acc or None)] in order of start; a trial without one (diverged: its last weights
    are NaN; failed before its first evaluation) is drawn on the bottom edge. search_starts: trial positions (1-based)
    where a new search began, drawn as vertical lines when the experiment holds several searches.
    """
    fig, ax = plt.subplots(figsize=(10, 5.5))
    xs = list(range(1, len(trials) + 1))
    finite = [v for _, v in trials if v is not None]
    floor = (min(finite) * 100 - 2) if finite else 0.0
    for outcome in OUTCOME_MARKERS:
        at = [(x, v) for x, (o, v) in zip(xs, trials) if o == outcome]
        if not at:
            continue
        ys = [v * 100 if v is not None else floor for _, v in at]
        ax.plot(
            [x for x, _ in at],
            ys,
            linestyle="none",
            markersize=7,
            alpha=0.85,
            label=f"{OUTCOME_LABELS[outcome]} ({len(at)})",
            **OUTCOME_MARKERS[outcome],
        )
    best, running_best = None, []
    for _, v in trials:
        if v is not None and (best is None or v > best):
            best = v
        running_best.append(best * 100 if best is not None else math.nan)
    if finite:
        ax.step(
            xs, running_best, where="post", color="black", linewidth=1.2, label=f"best so far ({running_best[-1]:.2f}%)"
        )
    for i, start in enumerate(search_starts):
        ax.axvline(
            start - 0.5, color="gray", linestyle=":", linewidth=1, label="a new search starts" if i == 0 else None
        )
    xlabel = "trial, in order of start"
    if any(v is None for _, v in trials):
        xlabel += "\n(markers along the bottom: diverged, or no accuracy recorded)"
    ax.set_xlabel(xlabel)
    ax.set_xlim(0.5, len(trials) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("final validation accuracy (%)")
    ax.set_title(f"{experiment}: search history ({plural(len(trials), 'trial')})")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    save_figure(fig, path)


def plot_importance(experiment: str, importances: dict, method: str, num_trials: int, path) -> None:
    """A horizontal bar per searched hyperparameter, most important on top."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(names)))
    bars = ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", padding=3, fontsize=9)
    ax.set_xlim(0, max(1.0, max(importances.values()) * 1.15))
    ax.set_xlabel("importance for final validation accuracy (normalised to sum to 1)")
    ax.set_title(
        f"{experiment}: hyperparameter importance\n{method}, {plural(num_trials, 'completed trial')}", fontsize=11
    )
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


# ---- which figures the data allows ----


def _label(t) -> str:
    return f"{t.trainer} ({t.trial_id})"


def make_figures(searches: list, best: dict, out_dir: Path) -> tuple:
    """Draw every figure the data allows; returns ([(path, caption)], [one-line notes on figures skipped])."""
    made, skipped = [], []
    for model in in_order([m for m, _ in best], MODELS):
        trainers = in_order([t for m, t in best if m == model], TRAINERS)
        series = {}
        for trainer in trainers:
            t = best[(model, trainer)]
            series[trainer] = dict(label=f"{_label(t)}, final val {t.final_val_acc * 100:.2f}%", **t.histories)
        path = out_dir / f"curves_{model}.png"
        plot_curves(model, series, path)
        made.append((path, f"{model}: loss and accuracy per epoch, best trial of each trainer"))

        blocks = {}
        for trainer in trainers:
            t = best[(model, trainer)]
            val = block_accuracies(t.metrics, "val")
            if trainer != "backprop" and val:
                blocks[trainer] = dict(label=_label(t), val=val, train=block_accuracies(t.metrics, "train"))
        if blocks:
            reference = best.get((model, "backprop"))
            path = out_dir / f"blocks_{model}.png"
            plot_blocks(
                model,
                blocks,
                reference.final_val_acc if reference else None,
                _label(reference) if reference else "backprop",
                path,
            )
            made.append((path, f"{model}: accuracy of each block's classifier at the final epoch"))

    for experiment in in_order([s.experiment for s in searches], []):
        in_experiment = [s for s in searches if s.experiment == experiment]
        trials = sorted((t for s in in_experiment for t in s.trials), key=lambda t: t.start_ms)
        if not any(t.final_val_acc is not None for t in trials):
            skipped.append(f"{experiment}: no trial has a validation accuracy yet — no history or importance figure.")
            continue
        starts = sorted(min(t.start_ms for t in s.trials) for s in in_experiment if s.trials)[1:]
        positions = [1 + sum(t.start_ms < start for t in trials) for start in starts]
        path = out_dir / f"history_{experiment}.png"
        plot_history(experiment, [(t.outcome, t.final_val_acc) for t in trials], path, tuple(positions))
        made.append((path, f"{experiment}: final validation accuracy of each trial, in order of start"))

        completed = [t for t in trials if t.outcome == "completed" and t.final_val_acc is not None]
        keys = sorted({k for s in in_experiment for k in s.searched})
        importances, method = param_importances(
            [t.params for t in completed],
            [t.final_val_acc for t in completed],
            keys,
            known={k: d.hull.distribution() for s in in_experiment for k, d in s.dimensions.items()},
        )
        if importances:
            path = out_dir / f"importance_{experiment}.png"
            plot_importance(experiment, importances, method, len(completed), path)
            made.append((path, f"{experiment}: hyperparameter importance ({method})"))
        else:
            skipped.append(f"{experiment}: no importance figure — {method}.")
    return made, skipped
