"""Train one config without Ray or a search.

    python -m tuner.train --trainer dgl --model vgg16 --epochs 2 --data-dir DIR --train-subset 5000 \\
        --set lr=0.05 width=0.25 aux_width=512 aux_depth=1

A progress line per epoch; the last line on stdout is one JSON object with the final metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from models.registry import build_trainer
from tuner.config.schema import TrialConfig, parse_assignment, resolve
from tuner.errors import ConfigError, DataError
from tuner.trial.data import load_arrays, make_splits
from tuner.trial.device import limit_threads, pick_device
from tuner.trial.epoch import evaluate_split, run_epoch, steps_per_epoch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tuner.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainer", help="backprop | dgl | dni | cdni")
    parser.add_argument("--model", help="basiccnn | vgg11 | vgg13 | vgg16 | vgg19")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--train-subset", type=int, help="a stratified, seeded subset of the training split")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--data-dir", help="a folder holding cifar-10-batches-py (default: ./data, downloaded)")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="any config key (tuner/config/schema.py)"
    )
    parser.add_argument("--test", action="store_true", help="also evaluate the test set at the end")
    parser.add_argument("--threads", type=float, default=None, help="torch CPU threads (default: all cores)")
    return parser.parse_args(argv)


def config_from_args(args) -> TrialConfig:
    overrides = dict(parse_assignment(item) for item in args.set)
    flags = {
        "trainer": args.trainer,
        "model": args.model,
        "epochs": args.epochs,
        "train_subset": args.train_subset,
        "seed": args.seed,
    }
    for key, value in flags.items():
        if value is not None:
            if key in overrides and overrides[key] != value:
                raise ConfigError(f"--{key.replace('_', '-')} and --set {key}= disagree")
            overrides[key] = value
    return resolve(overrides, where="tuner.train")


def train(cfg: TrialConfig, data_dir: str | None, with_test: bool = False, log=print) -> dict:
    device = pick_device(cfg.device)
    data = make_splits(
        load_arrays(data_dir), val_size=cfg.val_size, train_subset=cfg.train_subset, seed=cfg.split_seed, device=device
    )
    trainer = build_trainer(cfg, device, steps_per_epoch(data.train, cfg.batch_size))
    log(
        f"{cfg.trainer} on {cfg.model} (width {cfg.width}), {len(data.train)} train / {len(data.val)} val "
        f"images, {cfg.epochs} epochs on {device}"
    )
    start, metrics = time.perf_counter(), {}
    for _ in range(cfg.epochs):
        metrics = run_epoch(trainer, data)
        log(
            f"epoch {metrics['epoch']:3d}  train_loss {metrics['train_loss']:.4f}  "
            f"train_acc {metrics['train_acc']:.4f}  val_loss {metrics['val_loss']:.4f}  "
            f"val_acc {metrics['val_acc']:.4f}  {metrics['images_per_s']:.0f} img/s"
        )
        if metrics["diverged"]:
            log("the loss is no longer finite: stopping (diverged)")
            break
    metrics["epochs"] = metrics.pop("epoch")
    metrics["wall_s"] = time.perf_counter() - start
    if with_test:
        metrics.update(evaluate_split(trainer, data.test, "test"))
    return metrics


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
        limit_threads(args.threads)
        metrics = train(cfg, args.data_dir, with_test=args.test)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"trainer": cfg.trainer, "model": cfg.model, **metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
