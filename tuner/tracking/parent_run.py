"""The MLflow parent run of a search (and of a study and its confirm stage): opened with its experiment, found again,
reopened on resume, finished with the best trial's summary; and its child runs found, closed or deleted. Every call
names its run id through an MlflowClient."""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from tuner.outcome import finite_number
from tuner.tracking.store import (
    BEST_TRIAL_ID,
    OUTCOME,
    ROLE,
    SEARCH_FILTER,
    STATUS,
    TRIAL_ID,
    Role,
    all_of,
    all_runs,
    child_runs,
    sqlite_path,
    tag_filter,
)

PARENT_STATUSES = {"running": "RUNNING", "finished": "FINISHED", "interrupted": "KILLED"}
MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    items = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])


def log_trial_metric(client: MlflowClient, parent_run_id: str, trial_id: str, key: str, value: float) -> None:
    """A metric on a trial's child run, found by its dt.trial_id tag (e.g. the best trial's test_acc)."""
    for run in child_runs(client, parent_run_id, tag_filter(TRIAL_ID, trial_id)):
        client.log_metric(run.info.run_id, key, value)


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store go beside the database file (MLflow's default is ./mlruns under whatever the
    working directory happens to be); a tracking server decides for itself."""
    database = sqlite_path(tracking_uri)
    if database is None:
        return None
    return (Path(database).parent / "mlartifacts").resolve().as_uri()


def start_parent_run(
    client: MlflowClient,
    experiment_name: str,
    run_name: str,
    tags: dict,
    params: dict,
    space_text: str,
    text_name: str = "space.yaml",
) -> str:
    """Create the search's parent run (experiment created if missing); log its fixed config and space.yaml (a study
    logs its own file under its own name)."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        experiment_id = client.create_experiment(
            experiment_name, artifact_location=artifact_location(client.tracking_uri)
        )
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)  # a deleted experiment still owns its name; reuse it
    run = client.create_run(experiment_id, run_name=run_name, tags={ROLE: Role.SEARCH, STATUS: "running", **tags})
    log_params(client, run.info.run_id, params)
    client.log_text(run.info.run_id, space_text, text_name)
    return run.info.run_id


def find_parent_run(client: MlflowClient, experiment_name: str, run_name: str) -> str | None:
    """The parent run of the search named `run_name`, if one was opened."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    found = all_runs(client, [experiment.experiment_id], all_of(f"attributes.run_name = '{run_name}'", SEARCH_FILTER))
    return found[0].info.run_id if found else None


def reopen_run(client: MlflowClient, run_id: str) -> None:
    """Mark a parent run running again, for a resumed search."""
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, STATUS, "running")


def finish_parent_run(client: MlflowClient, run_id: str, status: str, summary: dict) -> None:
    """End the parent run. status: 'finished' or 'interrupted'.

    summary (every key optional): best_val_acc, best_test_acc, num_trials -> metrics; best_trial_id -> tag
    dt.best_trial_id; best_config (the searched keys of the best trial) -> params best.<key>.
    """
    if status not in ("finished", "interrupted"):
        raise ValueError(f"finish_parent_run: status must be 'finished' or 'interrupted', got {status!r}")
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(summary[key]), now, 0)
        for key in ("best_val_acc", "best_test_acc", "num_trials")
        if finite_number(summary.get(key))
    ]
    tags = [RunTag(STATUS, status)]
    if summary.get("best_trial_id"):
        tags.append(RunTag(BEST_TRIAL_ID, str(summary["best_trial_id"])))
    client.log_batch(run_id, metrics=metrics, tags=tags)
    # MLflow params cannot change once logged: log only the new ones (a search finished twice with the same best
    # logs nothing new); a different best for an already logged key is an error MLflow itself would raise
    logged = client.get_run(run_id).data.params
    best = {f"best.{key}": value for key, value in (summary.get("best_config") or {}).items()}
    log_params(client, run_id, {key: value for key, value in best.items() if key not in logged})
    client.set_terminated(run_id, status=PARENT_STATUSES[status])


def close_dangling_runs(
    client: MlflowClient, parent_run_id: str, status: str = "FAILED", outcome: str | None = "failed"
) -> list[str]:
    """End every child run still RUNNING with `status` and dt.outcome `outcome` (None: leave the tag as it is).

    The defaults are for trials cut off for good. An interrupted search ends the runs of the trials it will
    continue as KILLED with dt.outcome left 'running': undecided, and reopened when the search is resumed.
    """
    closed = []
    for run in child_runs(client, parent_run_id, "attributes.status = 'RUNNING'"):
        if outcome is not None:
            client.set_tag(run.info.run_id, OUTCOME, outcome)
        client.set_terminated(run.info.run_id, status=status)
        closed.append(run.info.run_id)
    return closed


def delete_child_runs(client: MlflowClient, parent_run_id: str) -> int:
    """Delete the child runs of a search that is started anew (its driver died before any trial was saved)."""
    children = child_runs(client, parent_run_id)
    for run in children:
        client.delete_run(run.info.run_id)
    return len(children)
