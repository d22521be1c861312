"""The report's figures, drawn from plain data (lists of (epoch, value) pairs, dicts), so each one can be read
and tested without MLflow. Accuracies come in as fractions and are drawn in percent.

Also `param_importances`: which hyperparameters mattered in a search, from the recorded trials alone.
"""

from __future__ import annotations

import math
import warnings

import matplotlib

matplotlib.use("Agg")  # files only, never a window: the report runs on headless machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# one colour per trainer, the same in every figure; backprop is the reference, so it is black
TRAINER_COLORS = {"backprop": "black", "dgl": "tab:blue", "dni": "tab:orange", "cdni": "tab:green"}
# how each trial outcome is marked in the search-history figure
OUTCOME_MARKERS = {
    "completed": dict(marker="o", color="tab:blue"),
    "stopped": dict(marker="v", color="tab:gray"),
    "running": dict(marker="o", color="tab:cyan", markerfacecolor="none"),
    "diverged": dict(marker="X", color="tab:red"),
    "failed": dict(marker="s", color="tab:purple"),
}
OUTCOME_LABELS = {"completed": "completed", "stopped": "stopped by ASHA", "running": "still running",
                  "diverged": "diverged", "failed": "failed"}
DPI = 110


def trainer_color(trainer: str) -> str:
    return TRAINER_COLORS.get(trainer, "tab:brown")


def plural(n: int, noun: str) -> str:
    suffix = "" if n == 1 else "es" if noun.endswith(("s", "ch", "sh", "x")) else "s"
    return f"{n} {noun}{suffix}"


def _save(fig, path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def plot_curves(model: str, series: dict, path) -> None:
    """Loss and accuracy per epoch of the best trial of each trainer.

    series: {trainer: {"label": legend text, "train_loss": [(epoch, v)], "val_loss": ..., "train_acc": ...,
    "val_acc": ...}}; a missing metric leaves its panel without that trainer's line.
    """
    panels = [("train_loss", "Training loss", "cross-entropy"), ("val_loss", "Validation loss", "cross-entropy"),
              ("train_acc", "Training accuracy", "accuracy (%)"), ("val_acc", "Validation accuracy", "accuracy (%)")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for ax, (key, title, ylabel) in zip(axes.flat, panels):
        scale = 100.0 if key.endswith("_acc") else 1.0
        for trainer, s in series.items():
            points = s.get(key) or []
            if points:
                ax.plot([e for e, _ in points], [v * scale for _, v in points], color=trainer_color(trainer),
                        marker="." if len(points) < 30 else None, label=s["label"])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = [], []
    for ax in axes.flat:   # every trainer that appears in any panel, once
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    # one legend for the whole figure, below the panels, so it never covers a curve
    legend_rows = math.ceil(max(len(labels), 1) / 2)
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False, bbox_to_anchor=(0.5, 0))
    fig.suptitle(f"{model}: best trial of each trainer (CIFAR-10)", fontsize=13)
    fig.tight_layout(rect=(0, 0.01 + 0.035 * legend_rows, 1, 1))
    _save(fig, path)


def plot_blocks(model: str, blocks: dict, backprop_val: float | None, backprop_label: str, path) -> None:
    """Accuracy of each block's classifier at the final epoch, against depth.

    blocks: {trainer: {"label": legend text, "val": [acc of block 1..K], "train": [acc of block 1..K] or []}};
    block K is the network's own classifier. backprop_val: the best backprop trial's final val_acc (or None).
    """
    fig, ax = plt.subplots(figsize=(9, 5.5))
    depth = 0
    for trainer, b in blocks.items():
        color = trainer_color(trainer)
        val = b["val"]
        depth = max(depth, len(val))
        ax.plot(range(1, len(val) + 1), [v * 100 for v in val], color=color, marker="o",
                label=f"{b['label']}: validation")
        if b.get("train"):
            train = b["train"]
            ax.plot(range(1, len(train) + 1), [v * 100 for v in train], color=color, marker="o",
                    linestyle="--", markerfacecolor="none", label=f"{b['label']}: training")
    if backprop_val is not None:
        ax.axhline(backprop_val * 100, color=trainer_color("backprop"), linestyle=":", linewidth=1.5,
                   label=f"{backprop_label}: validation ({backprop_val * 100:.2f}%)")
        low, high = ax.get_ylim()
        ax.set_ylim(low, max(high, backprop_val * 100 + 0.06 * (high - low)))   # the reference line clear of the frame
    ax.set_xticks(range(1, depth + 1))
    ax.set_xlabel(f"block depth (block {depth} = the network's own classifier)")
    ax.set_ylabel("accuracy of the block's classifier (%)")
    ax.set_title(f"{model}: accuracy by block at the final epoch (best trial)")
    ax.grid(alpha=0.3)
    # below the axes: in the plot the legend covered the deepest blocks' points, where the curves end
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=9, frameon=False)
    _save(fig, path)


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
        ax.plot([x for x, _ in at], ys, linestyle="none", markersize=7, alpha=0.85,
                label=f"{OUTCOME_LABELS[outcome]} ({len(at)})", **OUTCOME_MARKERS[outcome])
    best, running_best = None, []
    for _, v in trials:
        if v is not None and (best is None or v > best):
            best = v
        running_best.append(best * 100 if best is not None else math.nan)
    if finite:
        ax.step(xs, running_best, where="post", color="black", linewidth=1.2,
                label=f"best so far ({best * 100:.2f}%)")
    for i, start in enumerate(search_starts):
        ax.axvline(start - 0.5, color="gray", linestyle=":", linewidth=1,
                   label="a new search starts" if i == 0 else None)
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
    _save(fig, path)


def plot_importance(experiment: str, importances: dict, method: str, num_trials: int, path) -> None:
    """A horizontal bar per searched hyperparameter, most important on top."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(names)))
    bars = ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", padding=3, fontsize=9)
    ax.set_xlim(0, max(1.0, max(importances.values()) * 1.15))
    ax.set_xlabel("importance for final validation accuracy (normalised to sum to 1)")
    ax.set_title(f"{experiment}: hyperparameter importance\n{method}, {plural(num_trials, 'completed trial')}",
                 fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


# ---- hyperparameter importance ----

def _distribution(values: list):
    """The optuna distribution a list of recorded values fits, or None if the values do not vary."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if len(set(values)) < 2:
        return None
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        low, high = min(values), max(values)
        return IntDistribution(low, high, log=low >= 1 and high > 10 * low)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        low, high = float(min(values)), float(max(values))
        # a span over 10x was almost certainly searched on a log scale (lr, weight_decay)
        return FloatDistribution(low, high, log=low > 0 and high > 10 * low)
    # None mixed with ints (num_blocks), strings, bools: categories, kept in a stable order
    return CategoricalDistribution(sorted(set(values), key=repr))


def _holds(distribution, value) -> bool:
    if hasattr(distribution, "choices"):
        return value in distribution.choices
    return isinstance(value, (int, float)) and not isinstance(value, bool) and distribution.low <= value <= distribution.high


def _have_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def _ranks(values: list) -> list:
    """Average ranks (ties share their mean rank), for Spearman's correlation."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _association(xs: list, ys: list, categorical: bool) -> float:
    """|Spearman rank correlation| for a numeric parameter; the correlation ratio (eta) for a categorical one."""
    if categorical:
        mean = sum(ys) / len(ys)
        total = sum((y - mean) ** 2 for y in ys)
        groups = {}
        for x, y in zip(xs, ys):
            groups.setdefault(repr(x), []).append(y)
        between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values())
        return math.sqrt(between / total) if total > 0 else 0.0
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return abs(cov / (sx * sy)) if sx > 0 and sy > 0 else 0.0


def param_importances(configs: list, values: list, keys: list, use_sklearn: bool | None = None, known=None):
    """Importance of each of `keys` for `values` (one per config), as ({key: importance}, method).

    Rebuilds an in-memory optuna study from the recorded trials and asks optuna's fANOVA, which needs
    scikit-learn; without it, falls back to a per-parameter rank correlation (method says which).
    Returns ({}, reason) when there is nothing to measure (under 3 trials, or no parameter varies).
    `known`: key -> the distribution the search sampled it from (its space); otherwise one is fitted to the values.
    """
    import optuna

    if len(values) < 3:
        return {}, f"only {len(values)} completed trial(s); importance needs at least 3"
    distributions = {}
    for key in keys:
        d = _distribution([c.get(key) for c in configs])
        if d is not None:  # a conditional key also holds its default, which may lie outside what was sampled
            exact = (known or {}).get(key)
            distributions[key] = exact if exact is not None and all(_holds(exact, c.get(key)) for c in configs) else d
    if not distributions:
        return {}, "no searched hyperparameter varies across the completed trials"
    if len(set(values)) < 2:
        return {}, "every completed trial reached the same accuracy"
    use_sklearn = _have_sklearn() if use_sklearn is None else use_sklearn
    if not use_sklearn:
        scores = {k: _association([c.get(k) for c in configs], values,
                                  type(d).__name__ == "CategoricalDistribution")
                  for k, d in distributions.items()}
        total = sum(scores.values())
        scores = {k: (s / total if total > 0 else 0.0) for k, s in scores.items()}
        return dict(sorted(scores.items(), key=lambda kv: -kv[1])), "rank correlation (scikit-learn not installed)"

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for config, value in zip(configs, values):
        params = {k: config.get(k) for k in distributions}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    return dict(scores), "fANOVA (optuna)"
