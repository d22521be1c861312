"""Record the full learning curves of configs sampled from spaces: the tables bench/replay.py replays searches on.

    python -m bench.record_curves --data-dir DIR [--spaces bench/curves/dgl_small.yaml bench/curves/bp_small.yaml]
        [--configs 150] [--out-dir bench/curves] [--threads 1]

Config i of a space is the i-th draw of Optuna's random sampler (seeded with the space's searcher seed) over the
space's own distributions, conditional ones included, completed with its fixed values; it trains all its epochs in
this process (no Ray, no early stopping) and is appended to <out-dir>/<space name>.jsonl as one JSON line the moment
it ends. The spaces take turns config by config, so an interrupted recording leaves them level. Run the same
command again to continue: configs already in a file are skipped. The file's first line says how it was made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

CURVES = Path(__file__).with_name("curves")
DEFAULT_SPACES = [str(CURVES / "dgl_small.yaml"), str(CURVES / "bp_small.yaml")]
# per epoch, in each config's line: the lists are as long as the epochs it trained (shorter only if it diverged)
PER_EPOCH = ("val_acc", "val_loss", "train_loss", "epoch_s", "cpu_s")


def sampled_configs(space, count: int) -> list[dict]:
    """The first `count` configs of the space's random sampler: the same list, in the same order, on every call."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=space.searcher.seed))
    configs = []
    for _ in range(count):
        trial = study.ask()
        space.define_by_run(trial)
        configs.append(dict(trial.params))
        study.tell(trial, 0.0)  # random sampling ignores the value; telling keeps the study's trials finished
    return configs


def header(space, threads: int) -> dict:
    import numpy
    import optuna
    import torch

    from tuner.search.driver import code_version

    return {
        "space": space.name,
        "space_yaml": space.text,
        "command": " ".join([Path(sys.executable).name, "-m", "bench.record_curves", *sys.argv[1:]]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "optuna": optuna.__version__,
        },
        "machine": f"{platform.machine()} {cpu_model()}, {os.cpu_count()} cores, {platform.system()}",
        "threads": threads,
        "nice": os.nice(0),
        "per_epoch": {
            "val_acc": "validation accuracy after the epoch (what a search ranks by)",
            "epoch_s": "wall seconds of the epoch: training plus validation (tuner/trial/epoch.py's epoch_s)",
            "cpu_s": "CPU seconds this process used in the epoch: the cost with the load of others taken out",
        },
    }


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def read_table(path: Path) -> tuple[dict | None, dict[int, dict]]:
    """(the header, {config index: its line}) of a curves file; (None, {}) when there is none. A line cut short by a
    killed recording is dropped: that config is recorded again."""
    if not path.exists():
        return None, {}
    head, rows = None, {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "space_yaml" in row:
            head = row
        elif "index" in row:
            rows[row["index"]] = row
    return head, rows


def record_one(space, params: dict, arrays: dict) -> dict:
    """Train one config for all its epochs; its per-epoch curve."""
    from models.registry import build_trainer
    from tuner.config.schema import resolve
    from tuner.trial.data import make_splits
    from tuner.trial.epoch import run_epoch, steps_per_epoch

    cfg = resolve({**space.fixed, **params})
    start = time.perf_counter()
    data = make_splits(arrays, val_size=cfg.val_size, train_subset=cfg.train_subset, seed=cfg.split_seed, device="cpu")
    trainer = build_trainer(cfg, "cpu", steps_per_epoch(data.train, cfg.batch_size))
    row = {"setup_s": round(time.perf_counter() - start, 3), **{key: [] for key in PER_EPOCH}, "diverged": False}
    while trainer.epoch < cfg.epochs:
        cpu_start = time.process_time()
        metrics = run_epoch(trainer, data)
        metrics["cpu_s"] = time.process_time() - cpu_start
        for key in PER_EPOCH:
            row[key].append(round(metrics[key], 4 if key.endswith("_s") else 6))
        if metrics["diverged"]:
            row["diverged"] = True
            break
    return row


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.record_curves", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="a folder holding cifar-10-batches-py (default: ./data, downloaded)")
    p.add_argument("--spaces", nargs="+", default=DEFAULT_SPACES, help="space names or YAML paths")
    p.add_argument("--configs", type=int, default=150, help="configs per space (default 150)")
    p.add_argument("--out-dir", default=str(CURVES), help="where <space name>.jsonl go (default bench/curves)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from tuner.config.space_file import load_space
    from tuner.errors import UserError
    from tuner.trial.device import limit_threads

    args = parse_args(argv)
    try:
        if args.configs < 1 or args.threads < 1:
            raise UserError(f"--configs {args.configs}, --threads {args.threads}: must be integers >= 1")
        spaces = [load_space(name) for name in args.spaces]
        files = {space.name: Path(args.out_dir) / f"{space.name}.jsonl" for space in spaces}
        tables = {name: read_table(path) for name, path in files.items()}
        for space in spaces:
            head = tables[space.name][0]
            if head is not None and head["space_yaml"] != space.text:
                raise UserError(f"{files[space.name]}: was recorded from another version of {space.path}")
        from tuner.trial.data import load_arrays

        arrays = load_arrays(args.data_dir)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    limit_threads(args.threads)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    todo = {space.name: sampled_configs(space, args.configs) for space in spaces}
    has_header = {name: head is not None for name, (head, _) in tables.items()}
    for index in range(args.configs):
        for space in spaces:
            done = tables[space.name][1]
            if index in done:
                continue
            params = todo[space.name][index]
            row = {"index": index, "config": params, **record_one(space, params, arrays)}
            with files[space.name].open("a") as out:
                if not has_header[space.name]:
                    out.write(json.dumps(header(space, args.threads)) + "\n")
                    has_header[space.name] = True
                out.write(json.dumps(row) + "\n")
            done[index] = row
            best = max(row["val_acc"], default=float("nan"))
            print(f"{space.name} #{index}: best val_acc {best:.3f}, {sum(row['epoch_s']):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
