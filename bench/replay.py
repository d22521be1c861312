"""Searches replayed on recorded learning curves: the project's Ray Tune search, with a trainable that serves each
proposed config the curve recorded for its nearest recorded config (bench/curve_table.py) instead of training.

The Tuner, its ASHA scheduler and its Optuna searcher are built by the functions a real search builds them with
(`bench/search_efficiency.run_method`: `tuner.search.driver.space_searcher`, `make_trial_scheduler`,
`with_trial_resources`), so the decisions measured are this code's. A replayed epoch costs no time; each report
carries the CPU seconds the epoch took when it was recorded, which is the benchmark's time axis.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace

from ray import tune
from ray.tune.schedulers import TrialScheduler

from bench.curve_table import Curve, CurveTable
from bench.search_efficiency import EpochBudget, method_space, run_method
from tuner.config.space import Space

RAY_METHODS = ("asha_tpe", "asha_random", "fifo_tpe", "random")  # bench/search_efficiency.method_space's names
OPTUNA_METHOD = "optuna_sha_tpe"  # Optuna's TPE with its own successive-halving pruner, no Ray


def replay_trial(config: dict, table: CurveTable, space: Space) -> None:
    """The Ray trainable: report the nearest recorded config's curve epoch by epoch, marked as
    tuner/trial/trainable.py marks a live trial's results (`finished` on the last epoch, `diverged` once, then
    return)."""
    curve = table.nearest(config, space.params)
    for metrics in epoch_results(curve, config["epochs"]):
        tune.report(metrics)
        if metrics["diverged"]:
            return


def epoch_results(curve: Curve, epochs: int) -> list[dict]:
    """What a replayed trial reports, one dict per recorded epoch."""
    results = []
    for epoch, (val_acc, cpu_s) in enumerate(zip(curve.val_acc, curve.cpu_s), start=1):
        diverged = curve.diverged and epoch == len(curve.val_acc)
        result = {"epoch": epoch, "val_acc": val_acc, "recorded_s": cpu_s, "recorded_index": curve.index}
        result.update(diverged=diverged) if diverged else result.update(diverged=False, finished=epoch >= epochs)
        results.append(result)
    return results


class ReplayBudget(EpochBudget):
    """EpochBudget that also adds up the recorded seconds of the epochs reported (`seconds[i]` after `curve[i]`)
    and keeps every report, in order, as (trial id, epoch, val_acc, recorded index)."""

    def __init__(self, budget: int, metric: str, mode: str):
        super().__init__(budget, metric, mode)
        self.seconds: list[float] = []
        self.reports: list[tuple[str, int, float, int]] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        super().on_trial_result(iteration, trials, trial, result, **info)
        self.seconds.append((self.seconds[-1] if self.seconds else 0.0) + result["recorded_s"])
        self.reports.append((trial.trial_id, result["epoch"], result.get("val_acc"), result["recorded_index"]))

    def run(self, wall_s: float) -> dict:
        """What a replayed search returns (the keys of bench/search_efficiency.run_method's, and more)."""
        final = self.curve[-1][1] if self.curve else None
        return {
            "curve": self.curve,
            "seconds": self.seconds,
            "reports": self.reports,
            "final": final,
            "epochs": self.spent,
            "trials": len(self.latest),
            "errors": 0,
            "wall_s": round(wall_s, 2),
        }


def searched_space(space: Space, method: str, seed: int, budget: int) -> Space:
    """The space as `method` searches it with searcher seed `seed`, one trial at a time (see the module doc)."""
    return dataclasses.replace(method_space(space, method, seed, budget), max_concurrent=1)


def ray_replay(space: Space, table: CurveTable, method: str, seed: int, budget: int, storage: Path) -> dict:
    """One search of the table by a Ray method until `budget` epochs are reported: a real Tuner.fit()."""
    from tuner.search.driver import with_trial_resources

    searched = searched_space(space, method, seed, budget)
    counter = ReplayBudget(budget, space.metric, space.mode)
    trainable = with_trial_resources(searched, tune.with_parameters(replay_trial, table=table, space=searched))
    run = run_method(searched, trainable, budget, storage, counter)
    return {**run, "seconds": counter.seconds, "reports": counter.reports}


def direct_replay(space: Space, table: CurveTable, method: str, seed: int, budget: int, storage: Path) -> dict:
    """The same search as `ray_replay`, with the same scheduler and searcher objects called in the order Tune's
    controller calls them for one trial at a time (Ray 2.60 TuneController: suggest; scheduler.on_trial_add; per
    result scheduler.on_trial_result, then searcher.on_trial_result unless the decision is STOP, then the
    callbacks; a trial that returns is stopped without asking the scheduler; a stopped trial's last result goes to
    scheduler.on_trial_complete and searcher.on_trial_complete). No actors, no files but ASHA's own state: ~100x
    faster, and the same curve as ray_replay for the same seed (tests/test_replay.py checks both)."""
    from tuner.ray_adaptations.asha import make_trial_scheduler
    from tuner.search.driver import space_searcher

    searched = searched_space(space, method, seed, budget)
    scheduler, searcher = make_trial_scheduler(searched), space_searcher(searched, searched.searcher.points_to_evaluate)
    scheduler.set_search_properties(space.metric, space.mode)  # what TuneConfig(metric=, mode=) does
    searcher.set_search_properties(space.metric, space.mode, {})
    counter, start = ReplayBudget(budget, space.metric, space.mode), time.perf_counter()
    for number in range(searched.num_samples):
        trial = ReplayedTrial(f"{number:05d}", storage)
        config = searcher.suggest(trial.trial_id)
        scheduler.on_trial_add(None, trial)
        last = {}
        for last in epoch_results(table.nearest(config, space.params), config["epochs"]):
            last = {**last, "trial_id": trial.trial_id, "training_iteration": last["epoch"]}
            decision = scheduler.on_trial_result(None, trial, last)
            if decision != TrialScheduler.STOP:
                searcher.on_trial_result(trial.trial_id, last)
            counter.on_trial_result(number, [], trial, last)
            if decision == TrialScheduler.STOP or counter.stop_all():
                break
        scheduler.on_trial_complete(None, trial, last)
        searcher.on_trial_complete(trial.trial_id, result=last)
        if counter.stop_all():
            break
    return counter.run(time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class ReplayedTrial:
    """What of a Tune trial the scheduler, the searcher and EpochBudget read: its id, and (PersistentASHA) the
    folder its state goes to."""

    trial_id: str
    folder: Path

    @property
    def storage(self):
        return SimpleNamespace(experiment_fs_path=str(self.folder))


def optuna_replay(space: Space, table: CurveTable, seed: int, budget: int) -> dict:
    """Optuna's own TPE + SuccessiveHalvingPruner with the space's ASHA settings, one trial at a time, no Ray (a
    Ray search cannot take an Optuna pruner): the same budget, best-so-far rule and nearest-config mapping."""
    import optuna

    from tuner.config.space import make_sampler

    searched = method_space(space, "asha_tpe", seed, budget)
    asha = space.scheduler
    study = optuna.create_study(
        direction="maximize" if space.mode == "max" else "minimize",
        sampler=make_sampler(searched),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=asha.grace_period, reduction_factor=asha.reduction_factor
        ),
    )
    counter, start = ReplayBudget(budget, space.metric, space.mode), time.perf_counter()
    while not counter.stop_all():
        trial = study.ask()
        space.define_by_run(trial)
        config = {**trial.params, "epochs": space.base_config().epochs}
        state, value = optuna.trial.TrialState.PRUNED, None
        for result in epoch_results(table.nearest(config, space.params), config["epochs"]):
            counter.on_trial_result(0, [], OptunaTrial(trial.number), result)
            if result["diverged"]:
                state = optuna.trial.TrialState.FAIL
                break
            trial.report(result["val_acc"], result["epoch"])
            if result["finished"]:
                state, value = optuna.trial.TrialState.COMPLETE, result["val_acc"]
            elif counter.stop_all() or trial.should_prune():
                break
        study.tell(trial, value, state=state)
    return counter.run(time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class OptunaTrial:
    """The one attribute of a Tune trial that EpochBudget reads."""

    number: int

    @property
    def trial_id(self) -> str:
        return f"{self.number:05d}"
