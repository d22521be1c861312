"""What bench/search_replay.py reports from its replayed searches: anytime curves, regret, and how many epochs each
method needs to reach random search's final best, with bootstrap intervals; the figure.

A run is {"curve": [[epochs so far, best val_acc so far], ...], "seconds": [...]} as bench/replay.py returns it.
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP = 2000
METHOD_COLORS = {
    "asha_tpe": "tab:blue",
    "asha_random": "tab:cyan",
    "fifo_tpe": "tab:orange",
    "random": "tab:gray",
    "optuna_sha_tpe": "tab:green",
}


def best_by_epoch(run: dict, budget: int) -> np.ndarray:
    """Best val_acc so far after 1..budget epochs (NaN before the first ranked trial), each value held until the
    next report."""
    values, current, points = np.full(budget, np.nan), np.nan, dict((e, b) for e, b in run["curve"])
    for epochs in range(1, budget + 1):
        best = points.get(epochs, current)
        current = np.nan if best is None else best
        values[epochs - 1] = current
    return values


def best_by_time(run: dict, grid: np.ndarray) -> np.ndarray:
    """Best val_acc so far at each recorded-seconds point of `grid`."""
    seconds = np.array(run["seconds"])
    best = np.array([np.nan if b is None else b for _, b in run["curve"]], dtype=float)
    index = np.searchsorted(seconds, grid, side="right") - 1  # the last report at or before each time
    return np.where(index >= 0, best[np.clip(index, 0, None)], np.nan)


def epochs_to_reach(best: np.ndarray, target: float) -> np.ndarray:
    """Per run (rows of `best`), the epochs spent when its best first reaches `target`; inf if it never does."""
    reached = np.nan_to_num(best, nan=-np.inf) >= target
    return np.where(reached.any(axis=1), reached.argmax(axis=1) + 1.0, np.inf)


def quantiles(samples: np.ndarray) -> list[float]:
    """A 95% percentile interval that copes with inf (no interpolation between values)."""
    return [float(np.quantile(samples, q, method="inverted_cdf")) for q in (0.025, 0.975)]


def summarize(runs: dict[str, list[dict]], budget: int, table_best: float, seed: int = 0) -> dict:
    """Per method: final best and regret (mean, 95% bootstrap interval), and the epochs to reach random search's
    median final best (median over repetitions) and random's median over the method's, with a bootstrap interval
    that resamples the repetitions of both, the target included."""
    rng = np.random.default_rng(seed)
    best = {
        method: np.array([best_by_epoch(run, budget) for run in method_runs]) for method, method_runs in runs.items()
    }
    random_finals = best["random"][:, -1]
    target = float(np.median(random_finals))
    reach = {method: epochs_to_reach(values, target) for method, values in best.items()}
    samples = {method: rng.integers(0, len(values), (BOOTSTRAP, len(values))) for method, values in best.items()}
    boot_targets = np.median(random_finals[samples["random"]], axis=1)
    random_need = np.array(
        [np.median(epochs_to_reach(best["random"][i], t)) for i, t in zip(samples["random"], boot_targets)]
    )
    methods = {}
    for method, values in best.items():
        finals = values[:, -1]
        boot_finals = finals[samples[method]].mean(axis=1)
        need = np.array([np.median(epochs_to_reach(values[i], t)) for i, t in zip(samples[method], boot_targets)])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(np.isinf(need), 0.0, random_need / need)
        median_need = float(np.median(reach[method]))
        methods[method] = {
            "repetitions": len(finals),
            "final_best_mean": float(finals.mean()),
            "final_best_ci95": quantiles(boot_finals),
            "regret_mean": float(table_best - finals.mean()),
            "regret_ci95": sorted(table_best - x for x in quantiles(boot_finals)),
            "reached_target": int(np.isfinite(reach[method]).sum()),
            "epochs_to_target_median": median_need,
            "speedup_vs_random": float(np.median(reach["random"]) / median_need),
            "speedup_ci95": quantiles(ratios),
            "epochs_to_target": [None if np.isinf(e) else int(e) for e in reach[method]],
            "trials_mean": float(np.mean([run["trials"] for run in runs[method]])),
        }
    return {"budget_epochs": budget, "table_best": table_best, "target_val_acc": target, "methods": methods}


def text_rows(name: str, summary: dict) -> list[str]:
    lines = [
        f"{name}: budget {summary['budget_epochs']} epochs, table best {summary['table_best']:.3f}, "
        f"target (random's median final best) {summary['target_val_acc']:.3f}",
        f"  {'method':<15} {'final best (95% CI)':<24} {'regret':>7} {'reached':>8} {'epochs':>7}  "
        f"{'speed-up vs random (95% CI)':<28} trials",
    ]
    for method, m in summary["methods"].items():
        low, high = m["final_best_ci95"]
        s_low, s_high = m["speedup_ci95"]
        lines.append(
            f"  {method:<15} {m['final_best_mean']:.3f} ({low:.3f}-{high:.3f})      {m['regret_mean']:7.3f} "
            f"{m['reached_target']:>4}/{m['repetitions']:<3} {m['epochs_to_target_median']:7.0f}  "
            f"{m['speedup_vs_random']:5.2f} ({s_low:.2f}-{s_high:.2f})              {m['trials_mean']:.1f}"
        )
    return lines


def band(ax, x, values: np.ndarray, color: str, label: str, step: bool) -> None:
    """Mean over repetitions with its 95% bootstrap band (resampled repetitions)."""
    import warnings

    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(values), (400, len(values)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: before any trial reported
        means = np.nanmean(values[picks], axis=1)
        low, high = np.nanquantile(means, 0.025, axis=0), np.nanquantile(means, 0.975, axis=0)
        mean = np.nanmean(values, axis=0)
    ax.fill_between(x, low, high, color=color, alpha=0.18, lw=0, step="post" if step else None)
    ax.step(x, mean, where="post", color=color, lw=1.8, label=label) if step else ax.plot(x, mean, color=color, lw=1.8)


def plot(results: dict, path) -> None:
    """One row per table: best val_acc and regret against epochs spent, regret against recorded CPU seconds."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    fig, axes = plt.subplots(len(results), 3, figsize=(15, 4.2 * len(results)), squeeze=False)
    for row, (name, result) in enumerate(results.items()):
        summary, runs = result["summary"], result["runs"]
        budget, table_best = summary["budget_epochs"], summary["table_best"]
        epochs = np.arange(1, budget + 1)
        horizon = min(run["seconds"][-1] for method_runs in runs.values() for run in method_runs)
        grid = np.linspace(0, horizon, 200)
        for method, method_runs in runs.items():
            color, n = METHOD_COLORS.get(method, "black"), len(method_runs)
            best = np.array([best_by_epoch(run, budget) for run in method_runs])
            timed = np.array([best_by_time(run, grid) for run in method_runs])
            band(axes[row, 0], epochs, best, color, f"{method} (n={n})", step=True)
            band(axes[row, 1], epochs, table_best - best, color, method, step=True)
            band(axes[row, 2], grid, table_best - timed, color, method, step=False)
        axes[row, 0].axhline(summary["target_val_acc"], color="black", ls="--", lw=0.8, label="random's median final")
        axes[row, 0].yaxis.set_major_formatter(PercentFormatter(1.0))
        axes[row, 0].set_ylabel(f"{name}\nbest val_acc so far")
        for ax in axes[row, 1:]:
            ax.set_yscale("log")
            ax.set_ylabel("regret to the table's best")
        axes[row, 0].set_xlabel("epochs spent (all trials)")
        axes[row, 1].set_xlabel("epochs spent (all trials)")
        axes[row, 2].set_xlabel("recorded CPU seconds of the epochs spent")
        axes[row, 0].legend(fontsize=8, loc="lower right")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
    fig.suptitle("Replayed searches: mean over repetitions, 95% bootstrap band", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
