"""Does ASHA + TPE find a good config in fewer training epochs than random search without early stopping?

    python -m bench.search_efficiency --data-dir DIR [--space bench/search_efficiency.yaml] [--budget-epochs 24]
        [--repetitions 3] [--out bench_out/search_efficiency] [--log-to-run RUN_ID --mlflow-uri URI]

Per searcher seed, two searches of one space until their trials have reported the same number of epochs: `asha_tpe`
(the space's ASHA and Optuna TPE, as `tuner.run` builds them) and `random` (Optuna's random sampler over the same
distributions, every trial run to its last epoch). Writes search_efficiency.json and .png; bench/README.md has more.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.stopper import Stopper

from tuner.config.schema import Fifo, RandomSearch
from tuner.config.space import Space
from tuner.errors import SetupError, UserError, one_line
from tuner.outcome import trial_outcome
from tuner.ranking import best_trial, final_score
from tuner.ray_adaptations.environment import prepare_environment
from tuner.ray_adaptations.interrupts import sigterm_as_ctrl_c
from tuner.search.ray_cluster import init_ray
from tuner.tracking.store import DEFAULT_URI, connect, mlflow_client

DEFAULT_SPACE = Path(__file__).with_name("search_efficiency.yaml")
METHODS = ("asha_tpe", "random")
# what the JSON's numbers are, written into it
BEST_MEANS = "after each reported epoch: val_acc of the trial the search would pick then (tuner/ranking.py's rule)"
REACH_MEANS = "cumulative epochs when the curve first reaches target_val_acc (random's mean final best); null: never"


class EpochBudget(tune.Callback, Stopper):
    """Stops the whole search once its trials have reported `budget` epochs between them, and records the curve
    (epochs so far, best val_acc so far) in report order. Pass it as both `stop` and a callback: Tune calls a stopper
    a second time with the last result of a trial that returned, but tells callbacks each result once."""

    def __init__(self, budget: int, metric: str, mode: str):
        self.budget, self.metric, self.mode = budget, metric, mode
        self.spent = 0
        self.latest: dict[str, float | None] = {}  # trial id -> its latest score (None: diverged or not finite)
        self.curve: list[tuple[int, float | None]] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.spent += 1  # a trial reports once per epoch it trained
        self.latest[trial.trial_id] = final_score(result.get(self.metric), trial_outcome(result, False))
        best = best_trial(self.latest.items(), score=lambda t: t[1], trial_id=lambda t: t[0], mode=self.mode)
        self.curve.append((self.spent, best[1] if best else None))

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False  # trials end as the scheduler decides; only the budget ends them all

    def stop_all(self) -> bool:
        return self.spent >= self.budget


def method_space(space: Space, method: str, seed: int, budget: int) -> Space:
    """The space as one method searches it with one searcher seed; as many samples as the budget could use.
    `method`: <scheduler>_<sampler>, the space's own `asha` or `fifo` (no early stopping) and its own `tpe` or
    Optuna's `random` sampler over the same distributions; `random` alone is fifo_random."""
    scheduler, sampler = ("fifo", "random") if method == "random" else method.split("_")
    points = space.searcher.points_to_evaluate
    searcher = (
        space.searcher.model_copy(update={"seed": seed})
        if sampler == "tpe"
        else RandomSearch(seed=seed, points_to_evaluate=points)
    )
    scheduler = space.scheduler if scheduler == "asha" else Fifo()
    return dataclasses.replace(space, searcher=searcher, scheduler=scheduler, num_samples=budget)


def run_method(space: Space, trainable, budget: int, storage: Path, counter: EpochBudget | None = None) -> dict:
    """One search of `space` with `trainable` until `budget` epochs are reported: its curve, epochs, trials and
    wall time; `counter` (an EpochBudget) keeps what it records."""
    from tuner.ray_adaptations.asha import make_trial_scheduler
    from tuner.search.driver import space_searcher

    counter = counter or EpochBudget(budget, space.metric, space.mode)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per in-memory study
    # a trial the budget stopped before its first report has no result.json, which is no problem here
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    start = time.perf_counter()
    results = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=space_searcher(space, space.searcher.points_to_evaluate),
            scheduler=make_trial_scheduler(space),
            num_samples=space.num_samples,
            metric=space.metric,
            mode=space.mode,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            # result.json per trial, which Tune's ResultGrid reads back (as in tuner/search/driver.py)
            name=storage.name,
            storage_path=str(storage.parent),
            stop=counter,
            callbacks=[counter, JsonLoggerCallback()],
            verbose=0,
        ),
    ).fit()
    if counter.spent < budget and len(results) < space.num_samples:
        raise KeyboardInterrupt  # Tune's own Ctrl-C handling ended this search early: end the benchmark too
    return {
        "curve": counter.curve,
        "final": counter.curve[-1][1] if counter.curve else None,
        "epochs": counter.spent,
        "trials": len(counter.latest),
        "errors": sum(1 for result in results if result.error is not None),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def epochs_to_reach(curve: list, target: float) -> int | None:
    return next((epochs for epochs, best in curve if best is not None and best >= target), None)


def summarize(space: Space, budget: int, seeds: list[int], runs: dict) -> dict:
    """The JSON the benchmark writes, from {method: [run_method's dict per repetition]}."""
    random_finals = [run["final"] for run in runs["random"] if run["final"] is not None]
    target = statistics.mean(random_finals) if random_finals else None
    cfg = space.base_config()
    methods = {}
    for method, method_runs in runs.items():
        per_run = {key: [run[key] for run in method_runs] for key in ("final", "epochs", "trials", "errors", "wall_s")}
        methods[method] = {
            "curves": [[list(point) for point in run["curve"]] for run in method_runs],
            "final_best": per_run["final"],
            "epochs_to_reach_random_best": [
                epochs_to_reach(run["curve"], target) if target is not None else None for run in method_runs
            ],
            "epochs_reported": per_run["epochs"],
            "trials_reporting": per_run["trials"],
            "errored_trials": per_run["errors"],
            "wall_s": per_run["wall_s"],
        }
    return {
        "space": space.name,
        "budget_epochs": budget,
        "regime": {
            "trainer": space.trainer,
            "model": space.model,
            "width": cfg.width,
            "train_images": cfg.train_subset or "all",
            "val_images": cfg.val_size,
            "epochs_per_trial": cfg.epochs,
            "batch_size": cfg.batch_size,
            "searched": list(space.params),
            "asha": space.scheduler.model_dump(exclude={"type"}),
            "tpe_startup_trials": space.searcher.n_startup_trials,
            "points_to_evaluate": len(space.searcher.points_to_evaluate or []),
            "max_concurrent": space.max_concurrent,
            "cpus_per_trial": space.resources.cpu,
            "gpus_per_trial": space.resources.gpu,
            "searcher_seeds": seeds,
        },
        "best_so_far": BEST_MEANS,
        "epochs_to_reach": REACH_MEANS,
        "target_val_acc": target,
        "methods": methods,
    }


def plot(summary: dict, path: Path) -> None:
    """Best val_acc against cumulative epochs: each repetition thin, the mean over repetitions thick with the
    min-max band, random's final best (the target) dashed."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    curves = [curve for data in summary["methods"].values() for curve in data["curves"] if curve]
    epochs = np.arange(1, max([summary["budget_epochs"], *(curve[-1][0] for curve in curves)]) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (method, data), color in zip(summary["methods"].items(), ("tab:blue", "tab:gray")):
        reps = np.array([step_values(curve, len(epochs)) for curve in data["curves"]], dtype=float)  # None -> NaN
        for values in reps:
            ax.step(epochs, values, where="post", color=color, alpha=0.35, lw=0.8)
        ax.fill_between(epochs, reps.min(0), reps.max(0), step="post", color=color, alpha=0.12)
        label = f"{method}: mean of {len(reps)}, min-max band"
        ax.step(epochs, reps.mean(0), where="post", color=color, lw=2, label=label)
    if summary["target_val_acc"] is not None:
        ax.axhline(summary["target_val_acc"], color="black", ls="--", lw=0.8, label="random's mean final best")
    r = summary["regime"]
    ax.set_title(
        f"{summary['space']}: {r['trainer']} on {r['model']} (width {r['width']}), {r['train_images']} images, "
        f"≤ {r['epochs_per_trial']} epochs a trial, {len(r['searcher_seeds'])} searcher seeds",
        fontsize=9,
    )
    ax.set_xlabel("training epochs reported by all trials so far")
    ax.set_ylabel("val_acc of the best trial so far")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def step_values(curve: list, length: int) -> list:
    """The curve's value at each whole epoch count 1..length, each value held until the next (None before any)."""
    values, current, points = [], None, dict(curve)
    for epochs in range(1, length + 1):
        current = points.get(epochs, current)
        values.append(current)
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.search_efficiency", description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default=str(DEFAULT_SPACE), help="a space name or YAML path (needs ASHA and TPE)")
    p.add_argument("--data-dir", help="a folder holding cifar-10-batches-py (default: ./data, downloaded)")
    p.add_argument("--budget-epochs", type=int, help="epochs per search (default: 6 x the space's trial epochs)")
    p.add_argument("--repetitions", type=int, default=3, help="searcher seeds: the space's seed, +1, ...")
    p.add_argument("--out", default="bench_out/search_efficiency", help="folder for the .json and .png")
    p.add_argument("--log-to-run", metavar="RUN_ID", help="log both files as artifacts of this MLflow run")
    p.add_argument("--mlflow-uri", default=DEFAULT_URI, help="tracking store of --log-to-run")
    return p.parse_args(argv)


def checked_space(name: str) -> Space:
    from tuner.config.space_file import load_space

    space = load_space(name)
    if space.scheduler.type != "asha" or space.searcher.type != "optuna_tpe":
        raise SetupError(
            f"--space {name}: has scheduler {space.scheduler.type} and searcher {space.searcher.type}; "
            f"this comparison needs scheduler asha and searcher optuna_tpe"
        )
    return space


def check_run(run_id: str, uri: str) -> None:
    try:
        connect(uri, max_retries=0, timeout_s=10).get_run(run_id)
    except Exception as error:  # MLflow raises many types; the user needs one line
        raise SetupError(f"--log-to-run {run_id}: no such run in {uri} ({one_line(error)})") from None


def main(argv=None) -> int:
    prepare_environment()  # quiet Ray, MLflow and Optuna logs, as tuner.run has them
    args = parse_args(argv)
    try:
        space = checked_space(args.space)
        budget = 6 * space.base_config().epochs if args.budget_epochs is None else args.budget_epochs
        if budget < 1 or args.repetitions < 1:
            raise SetupError(f"--budget-epochs {budget}, --repetitions {args.repetitions}: must be integers >= 1")
        if args.log_to_run:
            check_run(args.log_to_run, args.mlflow_uri)
        from tuner.trial.data import load_arrays

        arrays = load_arrays(args.data_dir)
        init_ray()  # local; search_all shuts it down
        sigterm_as_ctrl_c()  # after ray.init, which replaces the handler: `kill` stops the benchmark as Ctrl-C does
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seeds = [space.searcher.seed + rep for rep in range(args.repetitions)]
    print(f"{space.name}: {', '.join(METHODS)} x {len(seeds)} searcher seeds, {budget} epochs each; out: {out}")
    files = [out / "search_efficiency.json", out / "search_efficiency.png"]

    def write(runs: dict) -> dict:  # after every repetition: an interrupted benchmark keeps what it measured
        summary = summarize(space, budget, seeds[: len(runs["random"])], runs)
        files[0].write_text(json.dumps(summary, indent=1) + "\n")
        plot(summary, files[1])
        return summary

    try:
        summary = write(search_all(space, arrays, budget, seeds, write))
    except KeyboardInterrupt:
        print(f"Interrupted; the repetitions that ended are in {out}", file=sys.stderr)
        return 130
    reach = {method: data["epochs_to_reach_random_best"] for method, data in summary["methods"].items()}
    print(f"epochs to reach random's mean final best ({summary['target_val_acc']}): {reach}")
    if args.log_to_run:
        client = mlflow_client(args.mlflow_uri)
        for path in files:
            client.log_artifact(args.log_to_run, str(path))
    print("\n".join(str(path) for path in files))
    return 0


def search_all(space: Space, arrays, budget: int, seeds: list[int], after_repetition) -> dict:
    """Every method with every seed, in the Ray started, calling `after_repetition(runs so far)` after each seed;
    Ray and the trials' folder are gone when it returns."""
    import ray

    from tuner.search.driver import trainable_for

    runs = {method: [] for method in METHODS}
    try:
        with tempfile.TemporaryDirectory(prefix="dt-search-efficiency-") as storage:
            for rep, seed in enumerate(seeds):
                for method in METHODS:
                    searched = method_space(space, method, seed, budget)
                    folder = Path(storage) / f"{method}-{rep}"
                    run = run_method(searched, trainable_for(searched, arrays), budget, folder)
                    print(
                        f"  {method} seed {seed}: {run['epochs']} epochs in {run['trials']} trials, "
                        f"best val_acc {run['final']}, {run['wall_s']} s",
                        flush=True,
                    )
                    runs[method].append(run)
                after_repetition(runs)
    finally:
        ray.shutdown()
    return runs


if __name__ == "__main__":
    sys.exit(main())
