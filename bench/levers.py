"""The levers that may close the DGL-backprop gap, compared at CPU scale on the same budget.

    python -m bench.levers --data-dir ../shared/data [--width 0.125 --subset 5000 --epochs 6]

One JSON line per configuration (validation accuracy, per-block accuracy, time), then a Markdown table. Every
row trains the same network on the same images for the same epochs with the same seed; only the lever differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tuner.config.schema import resolve
from tuner.text import markdown_table
from tuner.train import train
from tuner.trial.device import limit_threads
from tuner.trial.metric_names import block_accuracies

# The write-up's optimisation (AlonNT/Thesis main.py defaults: SGD lr 0.005, momentum 0.9 without Nesterov, weight
# decay 1e-5, batch 64; utils.py train_model keeps the lr constant). The other rows share the project's defaults.
WRITEUP_OPTIMISATION = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-5,
    "batch_size": 64,
    "schedule": "constant",
}

# name -> overrides on top of the shared budget. "dgl (write-up)" is the write-up's DGL: one block per conv layer,
# its flatten-MLP head (AlonNT/Thesis vgg.py get_blocks: Flatten -> Linear(C*H*W, 512) -> ReLU -> Linear(512, 10)).
WRITEUP_DGL = {
    "trainer": "dgl",
    "aux_head": "flatten_mlp",
    "aux_width": 512,
    "aux_depth": 1,
    "num_blocks": None,
    "local_loss": "pred",
}
LEVERS = {
    "backprop": {"trainer": "backprop"},
    "dgl (write-up)": {**WRITEUP_DGL, **WRITEUP_OPTIMISATION, "lr": 0.005},
    "dgl (write-up head, shared optimiser)": WRITEUP_DGL,
    "dgl aux_head=mlp_sr": {**WRITEUP_DGL, "aux_head": "mlp_sr"},
    "dgl aux_head=nokland": {**WRITEUP_DGL, "aux_head": "nokland"},
    "dgl aux_head=pooled_mlp": {**WRITEUP_DGL, "aux_head": "pooled_mlp"},
    "dgl aux_head=conv": {**WRITEUP_DGL, "aux_head": "conv", "aux_convs": 1, "aux_width": 64},
    "dgl aux_depth=2": {**WRITEUP_DGL, "aux_depth": 2},
    "dgl num_blocks=2": {**WRITEUP_DGL, "num_blocks": 2},
    "dgl local_loss=predsim": {**WRITEUP_DGL, "local_loss": "predsim", "sim_weight": 0.99},
    "dgl local_loss=predsim aux_head=nokland": {**WRITEUP_DGL, "local_loss": "predsim", "aux_head": "nokland"},
    "dgl local_loss=sim": {**WRITEUP_DGL, "local_loss": "sim"},
    "dgl dropout=0.2": {**WRITEUP_DGL, "dropout": 0.2},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--subset", type=int, default=5000)
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--only", nargs="*", help="run only these lever names")
    args = parser.parse_args(argv)
    limit_threads(None)
    budget = {
        "model": args.model,
        "width": args.width,
        "train_subset": args.subset,
        "val_size": args.val_size,
        "epochs": args.epochs,
        "lr": args.lr,
    }
    rows = []
    for name, lever in LEVERS.items():
        if args.only and name not in args.only:
            continue
        cfg = resolve({**budget, **lever})
        start = time.perf_counter()
        metrics = train(cfg, args.data_dir, log=lambda line: print(f"  {line}", file=sys.stderr))
        row = {
            "lever": name,
            "val_acc": metrics["val_acc"],
            "train_acc": metrics["train_acc"],
            "epochs": metrics["epochs"],
            "wall_s": round(time.perf_counter() - start, 1),
            "blocks": [round(v, 3) for v in block_accuracies(metrics, "val")],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(
        f"\n{args.model} width {args.width}, {args.subset} training images, {args.epochs} epochs, "
        f"lr {args.lr}, validation on {args.val_size} held-out images\n"
    )
    reference = next((r["val_acc"] for r in rows if r["lever"] == "backprop"), None)

    def gap(r) -> str:
        return "ref" if r["lever"] == "backprop" or reference is None else f"{100 * (r['val_acc'] - reference):+.1f}"

    table = [(r["lever"], f"{r['val_acc']:.4f}", f"{r['train_acc']:.4f}", gap(r), str(r["wall_s"])) for r in rows]
    header = ("configuration", "val_acc", "train_acc", "gap to backprop (pts)", "wall s")
    print("\n".join(markdown_table(header, table)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
