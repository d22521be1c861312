"""The search itself: Ray Tune + ASHA + Optuna + the MLflow tracker, new or restored, then the verdict.

Interruptions. Ctrl-C (or SIGTERM) stops the search gracefully: Ray saves its state, the runs of the trials in
flight are ended KILLED with dt.outcome 'running' (they continue on --resume), the parent run is tagged
interrupted and the resume command printed; exit code 130. A killed driver (SIGKILL, a crash) leaves the state
of the last controller step in which anything happened to a trial. `--resume` restores it: finished and failed
trials stay as they ended, trials in flight continue from their last epoch checkpoint, and the searcher, ASHA's
rungs and MLflow carry on where they stood. What this takes beyond Ray's public API is in tuner/ray_adaptations.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
from ray.tune.logger import JsonLoggerCallback

from tuner.config.settings import SearchSettings
from tuner.config.space import Space, config_values, make_sampler
from tuner.errors import SetupError, one_line
from tuner.outcome import ended_for_good, trial_outcome
from tuner.ranking import final_score, rank
from tuner.ray_adaptations.asha import make_trial_scheduler
from tuner.ray_adaptations.honest_optuna import make_searcher
from tuner.ray_adaptations.interrupts import sigterm_as_ctrl_c, stop_trials_at_once
from tuner.ray_adaptations.notices import FailureNotices, hide_interrupt_notices
from tuner.ray_adaptations.snapshots import SnapshotOnEvents, install_ray_snapshot
from tuner.search import old_layout
from tuner.search.folder import SearchRecord, claim, resume_command
from tuner.search.opening import check_checkpoint_room, check_gpu_placement
from tuner.search.progress import ProgressLine
from tuner.search.publish import announce_search, publish_results
from tuner.search.ray_cluster import check_cluster, init_ray
from tuner.search.warm_start import WarmStart, new_search_study
from tuner.text import fmt_value, text_table
from tuner.tracking.parent_run import (
    close_dangling_runs,
    delete_child_runs,
    find_parent_run,
    finish_parent_run,
    log_trial_metric,
    reopen_run,
    start_parent_run,
)
from tuner.tracking.store import CODE_VERSION, MODEL, SPACE, STORAGE, TRAINER, mlflow_client, nested_in_study
from tuner.tracking.trial_runs import MLflowTracker
from tuner.tracking.views import trial_number
from tuner.trial.data import load_arrays
from tuner.trial.epoch import evaluate_split
from tuner.trial.trainable import build_trial, load_checkpoint, train_trial

# what resume needs: a trial deletes its older checkpoint as it saves a new one, before the driver's snapshot names
# the new one, so a driver killed in between restores from the older one (measured: with 1, a SIGKILLed study's
# trial could not be restored). The best trial's last one is also what the test set is measured on.
CHECKPOINTS_KEPT = 2
PROGRESS_EVERY_S = 10


def trainable_for(space: Space, arrays: dict, evaluate_test: bool = False):
    return with_trial_resources(space, tune.with_parameters(train_trial, arrays=arrays, evaluate_test=evaluate_test))


def with_trial_resources(space: Space, trainable):
    """`trainable` (a function of a trial config) with the resources the space gives each trial."""

    def resources(config: dict) -> tune.PlacementGroupFactory:
        # a pipelined DGL trial (models/pipeline.py) runs its S stages as child processes: one bundle of S times the
        # per-trial share keeps them on one node and shows the trial all S GPUs (a placement group's later bundles
        # go to Ray tasks only; a child process sees just the first bundle's GPU)
        stages = config.get("stages", 1)
        return tune.PlacementGroupFactory([{"CPU": space.resources.cpu * stages, "GPU": space.resources.gpu * stages}])

    return tune.with_resources(trainable, resources)


def progress_reporter(space: Space):
    metrics = {"epoch": "epoch", "val_acc": "val_acc", "train_loss": "train_loss", "images_per_s": "img/s"}
    always_sampled = [name for name, param in space.params.items() if not param.when]  # Ray needs every column
    return tune.CLIReporter(
        metric_columns=metrics,
        parameter_columns=always_sampled,
        max_report_frequency=PROGRESS_EVERY_S,
        sort_by_metric=True,
        max_progress_rows=12,
    )


def space_searcher(space: Space, points: list[dict] | None = None, storage=None, study_name: str | None = None):
    """The space's searcher (Optuna TPE or random, honest about how trials ended) over its define-by-run space, each
    suggested config completed with the space's fixed values; storage None keeps the study in memory."""
    constants = {k: v for k, v in space.base_config().model_dump().items() if k not in space.params}

    def define_by_run(trial):
        space.define_by_run(trial)
        return constants  # Ray merges these fixed values into each suggested config

    return make_searcher(
        define_by_run,
        make_sampler(space),
        space.metric,
        space.mode,
        [space.in_optuna_terms(point)[0] for point in points or []],
        space.max_concurrent,
        storage=storage,
        study_name=study_name,
        config_of=config_values,
    )


def new_tuner(
    space: Space,
    folder: Path,
    record: SearchRecord,
    arrays: dict,
    settings: SearchSettings,
    warm: WarmStart | None = None,
) -> tune.Tuner:
    base = space.base_config()
    # the study in its storage (tuner/search/optuna_storage.py), with a warm start's trials in it
    # (tuner/search/warm_start.py)
    storage, points = new_search_study(folder, record.name, space, settings, warm)
    searcher = space_searcher(space, points, storage, record.name)
    tracker = MLflowTracker(
        record.mlflow_uri,
        record.parent_run_id,
        {TRAINER: space.trainer, MODEL: space.model},
        searched=tuple(space.params),
    )
    # one line per event (tuner/search/progress.py); Ray's status table with --verbose
    progress = (
        progress_reporter(space)
        if settings.verbose
        else ProgressLine(space.num_samples, base.epochs, space.metric, space.mode)
    )
    return tune.Tuner(
        trainable_for(space, arrays),
        tune_config=TuneConfig(
            search_alg=searcher,
            scheduler=make_trial_scheduler(space),
            num_samples=space.num_samples,
            metric=space.metric,
            mode=space.mode,
            trial_dirname_creator=lambda trial: trial.trial_id,
            trial_name_creator=lambda trial: trial.trial_id,
        ),
        run_config=run_config(folder, settings, tracker, progress),
    )


def run_config(folder: Path, settings: SearchSettings, tracker: MLflowTracker, progress) -> RunConfig:
    """What Ray is told about a Tune run in `folder` (a search's, or a study's confirm stage): MLflow's record of
    the trials, result.json per trial (what Tune's ResultGrid reads back), the resume snapshots, the checkpoints
    kept and the retries a crashed trial gets (settings.max_failures)."""
    return RunConfig(
        name=folder.name,
        storage_path=str(folder.parent),
        callbacks=[tracker, JsonLoggerCallback(), SnapshotOnEvents(), FailureNotices()],
        progress_reporter=progress,
        verbose=1,
        checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        failure_config=FailureConfig(max_failures=settings.max_failures),
    )


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def open_parent_run(client: MlflowClient, space: Space, folder: Path, record: SearchRecord, resume: bool) -> None:
    if resume:  # the run it opened; found by name if the driver died before it could write the id down
        record.parent_run_id = record.parent_run_id or find_parent_run(client, record.experiment, record.name) or ""
        if record.parent_run_id:
            reopen_run(client, record.parent_run_id)
            return
    tags = {
        **nested_in_study(record.settings.study_run_id),
        SPACE: space.name,
        TRAINER: space.trainer,
        MODEL: space.model,
        STORAGE: str(folder),
        CODE_VERSION: code_version(),
    }
    fixed = {k: v for k, v in space.base_config().model_dump().items() if k not in space.params}
    record.parent_run_id = start_parent_run(client, record.experiment, record.name, tags, fixed, space.text)


def restore_tuner(space: Space, folder: Path, arrays: dict, evaluate_test: bool = False) -> tune.Tuner:
    old_layout.install()  # a search saved before tuner/ had packages names our classes by their old paths
    try:
        # unfinished trials continue from their checkpoints; errored ones used up their retries and stay failed
        return tune.Tuner.restore(
            str(folder),
            trainable=trainable_for(space, arrays, evaluate_test),
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    except Exception as error:  # Ray raises many types for an unreadable folder; the user needs one line
        raise SetupError(f"--resume {folder}: Ray cannot restore this search ({one_line(error)})") from None


def run_search(
    space: Space,
    folder: Path,
    record: SearchRecord,
    resume: bool,
    settings: SearchSettings,
    warm: WarmStart | None = None,
) -> int:
    """warm: the warm start settings.warm_start names, when the caller has read it already."""
    if not resume:  # a resumed search's checkpoints are on the disk already
        check_checkpoint_room(space, folder.parent, CHECKPOINTS_KEPT)
    sigterm_as_ctrl_c()  # a reboot or `kill` stops the search as gracefully as Ctrl-C
    arrays = load_arrays(settings.data_dir)  # once, in the driver; trials share it through Ray's object store
    init_ray(settings.address)
    check_cluster(folder.parent, record.mlflow_uri, settings.address)  # several nodes: shared storage, a real server
    check_gpu_placement(space, [node["Resources"].get("GPU", 0) for node in ray.nodes() if node["Alive"]])
    lock = claim(folder)  # held until this process ends, whatever ends it
    if lock is None:
        raise SetupError(f"{folder}: another driver is running this search")
    record.status = "running"
    record.save(folder)  # from here on the search exists, and --resume continues it (or starts it anew)
    sigterm_as_ctrl_c()  # again: ray.init replaced it
    hide_interrupt_notices()
    stop_trials_at_once()
    client = mlflow_client(record.mlflow_uri)
    open_parent_run(client, space, folder, record, resume)
    record.save(folder)
    print("\n".join(announce_search(client, record, space, folder)), flush=True)
    if resume and install_ray_snapshot(folder):
        tuner = restore_tuner(space, folder, arrays)
    else:
        if resume:  # the driver died before any trial started: start the search anew, in its own folder and run
            delete_child_runs(client, record.parent_run_id)
        tuner = new_tuner(space, folder, record, arrays, settings, warm)
    results = tuner.fit()
    # a ResultGrid iterates by __getitem__, which mypy does not count as iterable
    if len(results) < space.num_samples or not all(ended_for_good(result) for result in results):  # type: ignore[attr-defined]
        return interrupted(results, space, folder, record, client)
    summary = summarize(results, space, arrays, client, record)
    # a ResultGrid iterates by __getitem__, which mypy does not count as iterable
    outcomes = Counter(trial_outcome(r.metrics or {}, r.error is not None) for r in results)  # type: ignore[attr-defined]
    print("\n".join(publish_results(client, record, space, summary, dict(outcomes))), flush=True)
    close_dangling_runs(client, record.parent_run_id)  # a safety net: every trial ended, so no run may stay open
    finish_parent_run(client, record.parent_run_id, "finished", summary)
    record.status = "finished"
    record.save(folder)
    return 0


def interrupted(results, space: Space, folder: Path, record: SearchRecord, client: MlflowClient) -> int:
    """Ctrl-C: Ray saved the state; end the runs of the trials in flight as KILLED (undecided, see the module
    docstring), mark the parent and the record interrupted, and say how to continue."""
    close_dangling_runs(client, record.parent_run_id, status="KILLED", outcome=None)
    ended = sum(1 for result in results if ended_for_good(result))
    finish_parent_run(client, record.parent_run_id, "interrupted", {})
    record.status = "interrupted"
    record.save(folder)
    print(
        f"\nInterrupted: {ended} of {space.num_samples} trials ended; the trials in flight continue from their "
        f"last epoch checkpoint. Continue with:\n  {resume_command(record.settings.space, folder)}",
        flush=True,
    )
    return 130


def summarize(results, space: Space, arrays: dict, client: MlflowClient, record: SearchRecord) -> dict:
    """Print the top trials and the best config; evaluate the best trial's checkpoint on the test set."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        outcome = trial_outcome(metrics, result.error is not None)
        rows.append((final_score(metrics.get(space.metric), outcome), result, outcome))
    # the report ranks with the same rule (tuner/ranking.py)
    scored = rank(
        rows,
        score=lambda r: r[0],
        trial_id=lambda r: r[1].metrics.get("trial_id"),
        mode=space.mode,
        completed=lambda r: r[2] == "completed",
    )
    print(f"\n{len(rows)} trials: " + ", ".join(f"{n} {o}" for o, n in Counter(r[2] for r in rows).items()))
    if not scored:
        print("No trial reported a finite validation score.")
        return {"num_trials": len(rows)}
    print(f"Top trials by final {space.metric} (those that ran every epoch first):")
    ids = [(r.metrics or {}).get("trial_id") for r in results]  # the order the run names number them in

    def number(result) -> str:
        return f"#{trial_number(result.metrics.get('trial_id'), ids) or '?'}"

    table = [["trial", "outcome", "epochs", space.metric, *space.params]]
    for value, result, outcome in scored[:5]:
        table.append(
            [
                number(result),
                outcome,
                str(result.metrics.get("epoch", 0)),
                f"{value:.4f}",
                *(fmt_value(result.config.get(k)) for k in space.params),
            ]
        )
    print("\n".join(text_table(table[0], table[1:], indent="  ")))
    best_value, best, _ = scored[0]
    best_config = {k: best.config[k] for k in space.params if k in best.config}
    test_acc = best_test_accuracy(best, arrays)
    print(
        f"\nBest: trial {number(best)} (Ray trial {best.metrics.get('trial_id')})  {space.metric} {best_value:.4f}"
        + (f"  test_acc {test_acc:.4f} (from its last checkpoint)" if test_acc is not None else "")
    )
    print("Best config: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in best_config.items()))
    trial_id = best.metrics.get("trial_id")
    if test_acc is not None:
        log_trial_metric(client, record.parent_run_id, trial_id, "test_acc", test_acc)
    print(f"Trials and checkpoints: {best.path.rsplit('/', 1)[0] if best.path else record.name}")
    print(f"MLflow: experiment '{record.experiment}' in {record.mlflow_uri}")
    return {
        "best_val_acc": best_value,
        "best_test_acc": test_acc,
        "num_trials": len(rows),
        "best_trial_id": trial_id,
        "best_config": best_config,
    }


def best_test_accuracy(result, arrays: dict) -> float | None:
    if result.checkpoint is None:
        return None
    trainer, data = build_trial(result.config, arrays)
    load_checkpoint(trainer, result.checkpoint)
    return evaluate_split(trainer, data.test, "test")["test_acc"]
