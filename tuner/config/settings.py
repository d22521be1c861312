"""What a search is asked to do, beyond its space: built by `python -m tuner.run` from its flags, stored as it is in
the search's `search.json`, and read back whole by `--resume` (so a resumed search runs as it started)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SearchSettings:
    space: str  # a space name or a YAML path, as given
    storage: str  # absolute folder holding the searches
    mlflow_uri: str  # absolute, so a search resumed from another folder finds it
    experiment_name: str | None = None  # MLflow experiment; None: the space's name
    data_dir: str | None = None  # None: ./data, downloaded
    address: str | None = None  # an existing Ray cluster; None: a local Ray
    max_failures: int = 2  # retries of a crashed trial from its checkpoint
    verbose: bool = False  # Ray's status table in place of one progress line per event
    warm_start: str | None = None  # an earlier search (folder or MLflow run) whose trials seed the new Optuna study
    warm_start_top: int = 0  # with warm_start: its K best configs run first
    optuna_storage: str | None = None  # the Optuna study's RDB URL; None: optuna.db in the search's folder
    study_run_id: str | None = None  # a study's parent run: this search is one arm of it, and its run nests there
    # overrides of the space (None: as the space says)
    num_samples: int | None = None
    max_epochs: int | None = None
    train_subset: int | None = None
    seed: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None


# the settings that override the space (as `tuner.run` flags of the same names), and Space.with_overrides' keyword
SPACE_OVERRIDES = {
    "num_samples": "num_samples",
    "max_epochs": "max_epochs",
    "train_subset": "train_subset",
    "seed": "seed",
    "cpus_per_trial": "cpus",
    "gpus_per_trial": "gpus",
    "max_concurrent": "max_concurrent",
}
