"""The search itself: Ray Tune + ASHA + Optuna + the MLflow tracker, new or restored, then the verdict.

Interruptions. Ctrl-C (or SIGTERM) stops the search gracefully: Ray saves its state, the runs of the trials in
flight are ended KILLED with dt.outcome 'running' (they continue on --resume), the parent run is tagged
interrupted and the resume command printed; exit code 130. A killed driver (SIGKILL, a crash) leaves the state
of the last controller step in which anything happened to a trial (SnapshotOnEvents). `--resume` restores it:
finished and failed trials stay as they ended, trials in flight continue from their last epoch checkpoint,
and the searcher, ASHA's rungs and MLflow carry on where they stood.
"""

from __future__ import annotations

import logging
import signal
from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune import Callback, CheckpointConfig, FailureConfig, RunConfig, TuneConfig
from ray.tune.logger import JsonLoggerCallback

from tuner.cluster import check_cluster, init_ray
from tuner.config import one_line
from tuner.data import load_arrays
from tuner.epoch import evaluate_split
from tuner.outcome import error_line, trial_error_text, trial_outcome
from tuner.progress import ProgressLine
from tuner.publish import announce_search, publish_results
from tuner.ranking import final_score, rank
from tuner.scheduler import make_scheduler
from tuner.searcher import make_searcher
from tuner.searches import SearchRecord, claim, install_ray_snapshot, resume_command, save_ray_snapshot
from tuner.spaces import Space, make_sampler
from tuner.text import fmt_value, text_table
from tuner.tracking import (MLflowTracker, close_dangling_runs, delete_child_runs, find_parent_run, finish_parent_run,
                            log_trial_metric, reopen_run, start_parent_run)
from tuner.trainable import build, load_checkpoint, train_trial
from tuner.warm_start import new_search_study

CHECKPOINTS_KEPT = 2
PROGRESS_EVERY_S = 10


def trainable_for(space: Space, arrays: dict):
    resources = {"cpu": space.resources["cpu"], "gpu": space.resources["gpu"]}
    return tune.with_resources(tune.with_parameters(train_trial, arrays=arrays), resources)


def progress_reporter(space: Space):
    metrics = {"epoch": "epoch", "val_acc": "val_acc", "train_loss": "train_loss", "images_per_s": "img/s"}
    always_sampled = [name for name, param in space.params.items() if not param.when]  # Ray needs every column
    return tune.CLIReporter(metric_columns=metrics, parameter_columns=always_sampled,
                            max_report_frequency=PROGRESS_EVERY_S, sort_by_metric=True, max_progress_rows=12)


class SnapshotOnEvents(Callback):
    """After each controller step in which something happened to a trial, copy Ray's experiment state whole
    (tuner/searches.py says why). TUNE_GLOBAL_CHECKPOINT_S=0 (tuner/cluster.py) makes Ray write that state at
    every step, so the copy is never behind the last event."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self._dirty = True
        self._num_trials = 0
        self._copied = None  # (path, mtime) of the staging state last copied

    def __getstate__(self) -> dict:
        return {}  # pickled into tuner.pkl: a restored search starts afresh

    def __setstate__(self, state: dict) -> None:
        self._reset()

    def _touch(self, *args, **info) -> None:
        self._dirty = True

    on_trial_start = on_trial_result = on_trial_complete = on_trial_error = on_trial_recover = _touch
    on_trial_save = on_checkpoint = _touch

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if not trials or (not self._dirty and len(trials) == self._num_trials):
            return
        storage = trials[0].storage
        staging = Path(storage.experiment_driver_staging_path)
        states = sorted(staging.glob("experiment_state-*.json"))
        if not states:
            return
        written = (states[-1], states[-1].stat().st_mtime_ns)
        if written == self._copied:
            return  # Ray has not written its state since the last copy; try again after the next step
        save_ray_snapshot(staging, Path(storage.experiment_fs_path))
        self._dirty, self._num_trials, self._copied = False, len(trials), written


class FailureNotices(Callback):
    """One line on the console for a trial that crashed, in place of Ray's traceback (TUNE_PRINT_ALL_TRIAL_ERRORS=0 in
    tuner/cluster.py): what it raised, and where the whole traceback is (also in MLflow, as the run's error.txt)."""

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        print(f"trial {trial.trial_id} crashed ({error_line(trial_error_text(trial))}); retrying from its last "
              f"checkpoint", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        # the copy in the search's folder: the one beside Ray's session files goes with them
        kept = Path(trial.storage.trial_fs_path) / Path(trial.error_file or "error.txt").name
        print(f"trial {trial.trial_id} failed ({error_line(trial_error_text(trial))}); traceback in {kept} and in "
              f"MLflow (error.txt)", flush=True)


def new_tuner(space: Space, folder: Path, record: SearchRecord, arrays: dict, max_failures: int,
              verbose: bool = False, warm_from: str | None = None, warm_top: int = 0) -> tune.Tuner:
    base = space.base_config()
    constants = {k: v for k, v in base.items() if k not in space.params}

    def define_by_run(trial):
        space.define_by_run(trial)
        return constants  # Ray merges these fixed values into each suggested config

    # the study in the search folder's optuna.db, with a warm start's trials in it (tuner/warm_start.py)
    storage, points = new_search_study(folder, record.name, space, warm_from, warm_top)
    searcher = make_searcher(define_by_run, make_sampler(space), space.metric, space.mode, points,
                             space.max_concurrent, storage=storage, study_name=record.name)
    tracker = MLflowTracker(record.mlflow_uri, record.parent_run_id,
                            {"dt.trainer": space.trainer, "dt.model": space.model}, searched=tuple(space.params))
    # one line per event (tuner/progress.py); Ray's status table with --verbose
    progress = (progress_reporter(space) if verbose else
                ProgressLine(space.num_samples, space.base_config()["epochs"], space.metric, space.mode))
    return tune.Tuner(
        trainable_for(space, arrays),
        tune_config=TuneConfig(search_alg=searcher, scheduler=make_scheduler(space),
                               num_samples=space.num_samples, metric=space.metric, mode=space.mode,
                               trial_dirname_creator=lambda trial: trial.trial_id,
                               trial_name_creator=lambda trial: trial.trial_id),
        run_config=RunConfig(
            # result.json per trial (what Tune's ResultGrid reads back); MLflow is the record users look at
            name=folder.name, storage_path=str(folder.parent),
            callbacks=[tracker, JsonLoggerCallback(), SnapshotOnEvents(), FailureNotices()],
            progress_reporter=progress, verbose=1,
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            failure_config=FailureConfig(max_failures=max_failures)),
    )


def open_parent_run(client: MlflowClient, space: Space, folder: Path, record: SearchRecord, resume: bool) -> None:
    from tuner.run import code_version

    if resume:  # the run it opened; found by name if the driver died before it could write the id down
        record.parent_run_id = record.parent_run_id or find_parent_run(client, record.experiment, record.name) or ""
        if record.parent_run_id:
            reopen_run(client, record.parent_run_id)
            return
    tags = {"dt.space": space.name, "dt.trainer": space.trainer, "dt.model": space.model, "dt.storage": str(folder),
            "dt.code_version": code_version()}
    fixed = {k: v for k, v in space.base_config().items() if k not in space.params}
    record.parent_run_id = start_parent_run(client, record.experiment, record.name, tags, fixed, space.text)


def restore_tuner(space: Space, folder: Path, arrays: dict) -> tune.Tuner:
    from tuner.run import SetupError

    try:
        # unfinished trials continue from their checkpoints; errored ones used up their retries and stay failed
        return tune.Tuner.restore(str(folder), trainable=trainable_for(space, arrays), resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    except Exception as error:  # Ray raises many types for an unreadable folder; the user needs one line
        raise SetupError(f"--resume {folder}: Ray cannot restore this search ({one_line(error)})") from None


class _RayInterruptNotices(logging.Filter):
    """Ray's own notices on Ctrl-C point at Tuner.restore() and list the trials in flight as if they had failed, and
    a trial that never started has no metrics to fetch; run_search says what applies here instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not message.startswith(("Experiment has been interrupted", "Trials did not complete",
                                       "Failed to fetch metrics"))


def _sigterm_as_ctrl_c(signum, frame) -> None:
    signal.raise_signal(signal.SIGINT)


def run_search(space: Space, folder: Path, record: SearchRecord, resume: bool, args) -> int:
    from tuner.run import SetupError

    # a reboot or `kill` stops the search as gracefully as Ctrl-C (set again after ray.init, which replaces it)
    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    arrays = load_arrays(args.data_dir)  # once, in the driver; trials share it through Ray's object store
    init_ray(args.address)
    check_cluster(folder.parent, record.mlflow_uri, args.address)  # several nodes: shared storage, a real server
    lock = claim(folder)  # held until this process ends, whatever ends it
    if lock is None:
        raise SetupError(f"{folder}: another driver is running this search")
    record.status = "running"
    record.save(folder)  # from here on the search exists, and --resume continues it (or starts it anew)
    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        logging.getLogger(name).addFilter(_RayInterruptNotices())
    client = MlflowClient(record.mlflow_uri)
    open_parent_run(client, space, folder, record, resume)
    record.save(folder)
    print("\n".join(announce_search(client, record, space, folder)), flush=True)
    if resume and install_ray_snapshot(folder):
        tuner = restore_tuner(space, folder, arrays)
    else:
        if resume:  # the driver died before any trial started: start the search anew, in its own folder and run
            delete_child_runs(client, record.parent_run_id)
        tuner = new_tuner(space, folder, record, arrays, args.max_failures, getattr(args, "verbose", False),
                          getattr(args, "warm_start", None), getattr(args, "warm_start_top", 0) or 0)
    results = tuner.fit()
    if len(results) < space.num_samples or not all(_ended(result) for result in results):
        return interrupted(results, space, folder, record, client, args)
    summary = summarize(results, space, arrays, client, record)
    outcomes = Counter(trial_outcome(r.metrics or {}, r.error is not None) for r in results)
    print("\n".join(publish_results(client, record, space, summary, dict(outcomes))), flush=True)
    close_dangling_runs(client, record.parent_run_id)  # a safety net: every trial ended, so no run may stay open
    finish_parent_run(client, record.parent_run_id, "finished", summary)
    record.status = "finished"
    record.save(folder)
    return 0


def interrupted(results, space: Space, folder: Path, record: SearchRecord, client: MlflowClient, args) -> int:
    """Ctrl-C: Ray saved the state; end the runs of the trials in flight as KILLED (undecided, see the module
    docstring), mark the parent and the record interrupted, and say how to continue."""
    close_dangling_runs(client, record.parent_run_id, status="KILLED", outcome=None)
    ended = sum(1 for result in results if _ended(result))
    finish_parent_run(client, record.parent_run_id, "interrupted", {})
    record.status = "interrupted"
    record.save(folder)
    print(f"\nInterrupted: {ended} of {space.num_samples} trials ended; the trials in flight continue from their "
          f"last epoch checkpoint. Continue with:\n  {resume_command(args.space, folder)}", flush=True)
    return 130


def _ended(result) -> bool:
    """Whether a trial ended for good: it ran its epochs (`finished`), diverged, used up its retries (an error), or
    the scheduler stopped it (Ray marks that result `done`). A trial stopped by Ctrl-C has none of these. (`done` alone
    is not enough: Ray's saved state can miss it on a trial that returned, so a restored one would look unended.)"""
    metrics = result.metrics or {}
    return result.error is not None or bool(metrics.get("finished") or metrics.get("diverged") or metrics.get("done"))


def summarize(results, space: Space, arrays: dict, client: MlflowClient, record: SearchRecord) -> dict:
    """Print the top trials and the best config; evaluate the best trial's checkpoint on the test set."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        outcome = trial_outcome(metrics, result.error is not None)
        rows.append((final_score(metrics.get(space.metric), outcome), result, outcome))
    # the report ranks with the same rule (tuner/ranking.py)
    scored = rank(rows, score=lambda r: r[0], trial_id=lambda r: r[1].metrics.get("trial_id"), mode=space.mode)
    print(f"\n{len(rows)} trials: " + ", ".join(f"{n} {o}" for o, n in Counter(r[2] for r in rows).items()))
    if not scored:
        print("No trial reported a finite validation score.")
        return {"num_trials": len(rows)}
    print(f"Top trials by final {space.metric}:")
    table = [["trial", "outcome", "epochs", space.metric, *space.params]]
    for value, result, outcome in scored[:5]:
        table.append([result.metrics.get("trial_id", "?"), outcome, str(result.metrics.get("epoch", 0)),
                      f"{value:.4f}", *(fmt_value(result.config.get(k)) for k in space.params)])
    print("\n".join(text_table(table[0], table[1:], indent="  ")))
    best_value, best, _ = scored[0]
    best_config = {k: best.config[k] for k in space.params if k in best.config}
    test_acc = best_test_accuracy(best, arrays)
    print(f"\nBest: trial {best.metrics.get('trial_id')}  {space.metric} {best_value:.4f}"
          + (f"  test_acc {test_acc:.4f} (from its last checkpoint)" if test_acc is not None else ""))
    print("Best config: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in best_config.items()))
    trial_id = best.metrics.get("trial_id")
    if test_acc is not None:
        log_trial_metric(client, record.parent_run_id, trial_id, "test_acc", test_acc)
    print(f"Trials and checkpoints: {best.path.rsplit('/', 1)[0] if best.path else record.name}")
    print(f"MLflow: experiment '{record.experiment}' in {record.mlflow_uri}")
    return {"best_val_acc": best_value, "best_test_acc": test_acc, "num_trials": len(rows),
            "best_trial_id": trial_id, "best_config": best_config}


def best_test_accuracy(result, arrays: dict) -> float | None:
    if result.checkpoint is None:
        return None
    trainer, data = build(result.config, arrays)
    load_checkpoint(trainer, result.checkpoint)
    return evaluate_split(trainer, data.test, "test")["test_acc"]
