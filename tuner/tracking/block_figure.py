"""The figure logged with each local-learning trial's MLflow run: its blocks' accuracy against depth (the report draws
the same figure for the best trials). Matplotlib, so only imported where a figure is drawn."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tuner.trial.metric_names import block_accuracies

BLOCK_FIGURE = "accuracy_by_block.png"
DPI = 110
# one colour per trainer, the same in every figure; backprop is the reference, so it is black
TRAINER_COLORS = {"backprop": "black", "dgl": "tab:blue", "dni": "tab:orange", "cdni": "tab:green"}


def trainer_color(trainer: str) -> str:
    return TRAINER_COLORS.get(trainer, "tab:brown")


def save_figure(fig, path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def plot_blocks(
    model: str, blocks: dict, backprop_val: float | None, backprop_label: str, path, title: str | None = None
) -> None:
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
        ax.plot(
            range(1, len(val) + 1), [v * 100 for v in val], color=color, marker="o", label=f"{b['label']}: validation"
        )
        if b.get("train"):
            train = b["train"]
            ax.plot(
                range(1, len(train) + 1),
                [v * 100 for v in train],
                color=color,
                marker="o",
                linestyle="--",
                markerfacecolor="none",
                label=f"{b['label']}: training",
            )
    if backprop_val is not None:
        ax.axhline(
            backprop_val * 100,
            color=trainer_color("backprop"),
            linestyle=":",
            linewidth=1.5,
            label=f"{backprop_label}: validation ({backprop_val * 100:.2f}%)",
        )
        low, high = ax.get_ylim()
        ax.set_ylim(low, max(high, backprop_val * 100 + 0.06 * (high - low)))  # the reference line clear of the frame
    ax.set_xticks(range(1, depth + 1))
    ax.set_xlabel(f"block depth (block {depth} = the network's own classifier)")
    ax.set_ylabel("accuracy of the block's classifier (%)")
    ax.set_title(title or f"{model}: accuracy by block at the final epoch (best trial)")
    ax.grid(alpha=0.3)
    # below the axes: in the plot the legend covered the deepest blocks' points, where the curves end
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=9, frameon=False)
    save_figure(fig, path)


def log_block_figure(client, run_id: str, run_name: str, trainer: str, result: dict) -> bool:
    """A local-learning trial's final accuracy of each block's classifier against depth, as the run's artifact
    accuracy_by_block.png. False when the result has no per-block accuracies (backprop)."""
    val = block_accuracies(result, "val")
    if not val:
        return False
    blocks = {trainer: {"label": run_name, "val": val, "train": block_accuracies(result, "train")}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / BLOCK_FIGURE
        plot_blocks("", blocks, None, "", path, title=f"{run_name}: accuracy by block at epoch {result.get('epoch')}")
        client.log_artifact(run_id, str(path))
    return True
