"""Where a search's Optuna study lives: an Optuna RDB storage, by default the SQLite file `optuna.db` in the search's
folder, under the search's name. Ray's OptunaSearch takes the storage and the study name as they are, so every trial
Optuna is told about (with the intermediate values of pruned ones) is in that file, and

    optuna-dashboard sqlite:///<search folder>/optuna.db

or `optuna.load_study(study_name=<search name>, storage=...)` shows the study while it runs and after.
"""

from __future__ import annotations

from pathlib import Path

import optuna

STUDY_FILE = "optuna.db"


def storage_url(folder: Path) -> str:
    return f"sqlite:///{Path(folder).resolve() / STUDY_FILE}"


def open_storage(folder: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(storage_url(folder))


def fresh_study_storage(folder: Path, study_name: str) -> optuna.storages.RDBStorage:
    """The storage for a search that starts (or starts anew after its driver died before any trial was saved): a
    study left under the same name holds trials Ray will not report on, so it is deleted first."""
    storage = open_storage(folder)
    if any(summary.study_name == study_name for summary in optuna.get_all_study_summaries(storage)):
        optuna.delete_study(study_name=study_name, storage=storage)
    return storage


def dashboard_command(folder: Path) -> str:
    return f"optuna-dashboard {storage_url(folder)}"
