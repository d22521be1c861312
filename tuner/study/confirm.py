"""A study's confirm stage: each candidate config (tuner/study/results.py picks them) re-trained with new seeds, as
one Ray Tune run -- every (config, seed) a trial, no searcher, no early stopping -- measuring the test split after
every epoch. It checkpoints, snapshots and resumes exactly like a search (tuner/search/driver.py), and logs one MLflow
run per trial (tagged dt.role=confirm) under the confirm stage's own run, which nests under the study's.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune import TuneConfig
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from tuner.config.settings import SearchSettings
from tuner.config.space import Space
from tuner.outcome import ended_for_good
from tuner.ray_adaptations.snapshots import install_ray_snapshot
from tuner.search.driver import restore_tuner, run_config, trainable_for
from tuner.search.progress import ProgressLine
from tuner.study.results import CANDIDATES, save_candidates
from tuner.tracking.parent_run import close_dangling_runs, start_parent_run
from tuner.tracking.store import ROLE, Role, mlflow_client, nested_in_study

FOLDER = "confirm"  # the Ray experiment, inside the study's folder
TEST_METRICS = ("test_acc", "test_loss")


def domain_of(configs: list) -> dict:
    """A param space that holds every config (Ray checks each preset point against it): a key's one value, or a
    choice of the values the configs give it. With as many samples as points, nothing is ever drawn from it."""
    space = {}
    for key in configs[0]:
        values = list(dict.fromkeys(config[key] for config in configs))
        space[key] = values[0] if len(values) == 1 else tune.choice(values)
    return space


def open_confirm_run(client: MlflowClient, experiment: str, study_run_id: str, candidates: list) -> str:
    tags = {ROLE: Role.CONFIRM_STAGE, **nested_in_study(study_run_id)}
    return start_parent_run(client, experiment, FOLDER, tags, {}, save_candidates(candidates), CANDIDATES)


def new_confirm_tuner(
    space: Space, folder: Path, configs: list, arrays: dict, settings: SearchSettings, run_id: str
) -> tune.Tuner:
    from tuner.tracking.trial_runs import MLflowTracker

    tracker = MLflowTracker(
        settings.mlflow_uri, run_id, {ROLE: Role.CONFIRM}, searched=("seed",), extra_metrics=TEST_METRICS
    )
    progress = ProgressLine(len(configs), space.base_config().epochs, "test_acc", "max")
    return tune.Tuner(
        trainable_for(space, arrays, evaluate_test=True),
        param_space=domain_of(configs),
        tune_config=TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=configs, max_concurrent=space.max_concurrent or 0),
            scheduler=FIFOScheduler(),
            num_samples=len(configs),
            trial_dirname_creator=lambda trial: trial.trial_id,
            trial_name_creator=lambda trial: trial.trial_id,
        ),
        run_config=run_config(folder, settings, tracker, progress),
    )


def run_confirm(
    space: Space, study_folder: Path, configs: list, arrays: dict, settings: SearchSettings, run_id: str
) -> bool:
    """Run (or continue) the confirm trials, as the study's `settings` say its runs go (MLflow, retries); True when
    every one ended, False after Ctrl-C."""
    folder = study_folder / FOLDER
    if folder.is_dir() and install_ray_snapshot(folder):
        tuner = restore_tuner(space, folder, arrays, evaluate_test=True)
    else:
        tuner = new_confirm_tuner(space, folder, configs, arrays, settings, run_id)
    results = tuner.fit()
    client = mlflow_client(settings.mlflow_uri)
    # a ResultGrid iterates by __getitem__, which mypy does not count as iterable
    if len(results) < len(configs) or not all(ended_for_good(result) for result in results):  # type: ignore[attr-defined]
        close_dangling_runs(client, run_id, status="KILLED", outcome=None)
        return False
    close_dangling_runs(client, run_id)
    return True
