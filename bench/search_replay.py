"""Does ASHA + TPE earn its keep? Every method replayed many times on recorded learning curves, same epoch budget.

    python -m bench.search_replay [--tables bench/curves/dgl_small.jsonl bench/curves/bp_small.jsonl]
        [--repetitions 50] [--budget-epochs N] [--check-ray 1] [--out bench_out/search_replay]

Per table (bench/record_curves.py's file, searched with the space next to it, <name>.yaml) and per searcher seed
(the space's seed, +1, ...): asha_tpe, asha_random, fifo_tpe, random (FIFO) and optuna_sha_tpe, each until its
trials have reported --budget-epochs epochs (default: ten full trials). bench/replay.py replays them;
`--check-ray K` first runs K seeds of each Ray method through a real Tuner.fit() and stops if any curve differs from
the direct replay's. Writes search_replay.json and .png to --out; bench/README.md has the design and the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.curve_table import CurveTable, describe, load_table
from bench.replay import OPTUNA_METHOD, RAY_METHODS, direct_replay, optuna_replay, ray_replay
from bench.replay_report import plot, summarize, text_rows
from tuner.config.space import Space
from tuner.errors import UserError

CURVES = Path(__file__).with_name("curves")
DEFAULT_TABLES = [str(CURVES / "dgl_small.jsonl"), str(CURVES / "bp_small.jsonl")]
METHODS = (*RAY_METHODS, OPTUNA_METHOD)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.search_replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", nargs="+", default=DEFAULT_TABLES, help="curves files (bench/record_curves.py)")
    p.add_argument("--repetitions", type=int, default=50, help="searcher seeds per method (default 50)")
    p.add_argument("--budget-epochs", type=int, help="epochs per search (default: 10 x a trial's epochs)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD")
    p.add_argument("--check-ray", type=int, default=1, help="seeds per Ray method also run through Tuner.fit()")
    p.add_argument("--out", default="bench_out/search_replay", help="folder for the .json and .png")
    return p.parse_args(argv)


def table_and_space(path: str) -> tuple[CurveTable, Space]:
    from tuner.config.space_file import load_space

    try:
        table = load_table(Path(path))
    except (OSError, ValueError) as error:
        raise UserError(f"--tables {path}: cannot be read ({error})") from None
    space = load_space(str(Path(path).with_suffix(".yaml")))
    if table.header["space_yaml"] != space.text:
        raise UserError(f"--tables {path}: was recorded from another version of {space.path}")
    return table, space


def check_ray(table: CurveTable, space: Space, budget: int, seeds: list[int], storage: Path) -> list[str]:
    """Each Ray method with `seeds` both ways; one line per run. Raises SystemExit(1) if a curve differs."""
    lines = []
    for method in RAY_METHODS:
        for seed in seeds:
            start = time.perf_counter()
            live = ray_replay(space, table, method, seed, budget, storage / f"ray-{method}-{seed}")
            ray_s = time.perf_counter() - start
            direct = direct_replay(space, table, method, seed, budget, storage / f"direct-{method}-{seed}")
            same = live["curve"] == direct["curve"] and live["seconds"] == direct["seconds"]
            lines.append(
                f"  Tuner.fit() {method} seed {seed}: {live['trials']} trials, {ray_s:.1f} s; direct replay "
                f"{direct['wall_s']:.2f} s; same curve: {'yes' if same else 'NO'}"
            )
            if not same:
                print("\n".join(lines), file=sys.stderr)
                raise SystemExit(1)
    return lines


def replay_table(table: CurveTable, space: Space, args, storage: Path) -> dict:
    budget = args.budget_epochs or 10 * space.base_config().epochs
    seeds = [space.searcher.seed + rep for rep in range(args.repetitions)]
    runs = {method: [] for method in args.methods}
    for method in args.methods:
        for seed in seeds:
            if method == OPTUNA_METHOD:
                run = optuna_replay(space, table, seed, budget)
            else:
                run = direct_replay(space, table, method, seed, budget, storage / f"{method}-{seed}")
            runs[method].append({key: value for key, value in run.items() if key != "reports"})  # kept small
    return {"summary": summarize(runs, budget, table.best_final), "runs": runs}


def main(argv=None) -> int:
    from tuner.ray_adaptations.environment import prepare_environment

    prepare_environment()  # quiet Ray and Optuna logs, as tuner.run has them
    args = parse_args(argv)
    try:
        if args.repetitions < 2 or (args.budget_epochs is not None and args.budget_epochs < 1) or args.check_ray < 0:
            raise UserError("--repetitions must be >= 2, --budget-epochs >= 1, --check-ray >= 0")
        if "random" not in args.methods:
            raise UserError("--methods: must include random (the reference the speed-ups are measured against)")
        tables = {Path(path).stem: table_and_space(path) for path in args.tables}
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per in-memory study
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, results = time.perf_counter(), {}
    with tempfile.TemporaryDirectory(prefix="dt-search-replay-") as storage:
        if args.check_ray:
            from tuner.search.ray_cluster import init_ray

            ray_start = time.perf_counter()
            init_ray(num_cpus=2)
            name, (table, space) = next(iter(tables.items()))
            budget = args.budget_epochs or 10 * space.base_config().epochs
            seeds = [space.searcher.seed + k for k in range(args.check_ray)]
            print(f"{name}: the direct replay against Tuner.fit(), {len(seeds)} seed(s) per Ray method", flush=True)
            print("\n".join(check_ray(table, space, budget, seeds, Path(storage))), flush=True)
            print(f"  Ray check: {time.perf_counter() - ray_start:.0f} s, Ray's start included", flush=True)
        for name, (table, space) in tables.items():
            print(describe(table), flush=True)
            table_start = time.perf_counter()
            results[name] = replay_table(table, space, args, Path(storage) / name)
            print("\n".join(text_rows(name, results[name]["summary"])), flush=True)
            took = time.perf_counter() - table_start
            print(f"  {len(args.methods)} methods x {args.repetitions} repetitions: {took:.0f} s", flush=True)
    (out / "search_replay.json").write_text(json.dumps(results) + "\n")
    plot(results, out / "search_replay.png")
    print(f"{time.perf_counter() - start:.0f} s in all; {out / 'search_replay.json'}, {out / 'search_replay.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
