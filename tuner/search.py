"""The search itself: Ray Tune + ASHA + Optuna + the MLflow tracker, new or restored, then the verdict."""

from __future__ import annotations

import math
from pathlib import Path

from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
from ray.tune.logger import JsonLoggerCallback

from tuner.cluster import init_ray
from tuner.data import load_arrays
from tuner.epoch import evaluate_split
from tuner.outcome import trial_outcome
from tuner.scheduler import make_scheduler
from tuner.searcher import make_searcher
from tuner.searches import SearchRecord
from tuner.spaces import Space, make_sampler
from tuner.tracking import MLflowTracker, finish_parent_run, reopen_run, start_parent_run
from tuner.trainable import build, load_checkpoint, train_trial

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


def new_tuner(space: Space, folder: Path, record: SearchRecord, arrays: dict, max_failures: int) -> tune.Tuner:
    base = space.base_config()
    constants = {k: v for k, v in base.items() if k not in space.params}

    def define_by_run(trial):
        space.define_by_run(trial)
        return constants  # Ray merges these fixed values into each suggested config

    searcher = make_searcher(define_by_run, make_sampler(space), space.metric, space.mode,
                             space.searcher.get("points_to_evaluate"), space.max_concurrent)
    tracker = MLflowTracker(record.mlflow_uri, record.parent_run_id,
                            {"dt.trainer": space.trainer, "dt.model": space.model})
    return tune.Tuner(
        trainable_for(space, arrays),
        tune_config=TuneConfig(search_alg=searcher, scheduler=make_scheduler(space, folder),
                               num_samples=space.num_samples, metric=space.metric, mode=space.mode,
                               trial_dirname_creator=lambda trial: trial.trial_id,
                               trial_name_creator=lambda trial: trial.trial_id),
        run_config=RunConfig(
            # result.json per trial (what Tune's ResultGrid reads back); MLflow is the record users look at
            name=folder.name, storage_path=str(folder.parent), callbacks=[tracker, JsonLoggerCallback()],
            progress_reporter=progress_reporter(space), verbose=1,
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            failure_config=FailureConfig(max_failures=max_failures)),
    )


def open_parent_run(client: MlflowClient, space: Space, folder: Path, record: SearchRecord, resume: bool) -> None:
    from tuner.run import code_version

    if resume and record.parent_run_id:
        reopen_run(client, record.parent_run_id)
        return
    tags = {"dt.space": space.name, "dt.trainer": space.trainer, "dt.model": space.model, "dt.storage": str(folder),
            "dt.code_version": code_version()}
    fixed = {k: v for k, v in space.base_config().items() if k not in space.params}
    record.parent_run_id = start_parent_run(client, record.experiment, record.name, tags, fixed, space.text)


def run_search(space: Space, folder: Path, record: SearchRecord, resume: bool, args) -> int:
    arrays = load_arrays(args.data_dir)  # once, in the driver; trials share it through Ray's object store
    init_ray(args.address)
    client = MlflowClient(record.mlflow_uri)
    open_parent_run(client, space, folder, record, resume)
    record.status = "running"
    record.save(folder)
    if resume:
        tuner = tune.Tuner.restore(str(folder), trainable=trainable_for(space, arrays), resume_errored=True)
    else:
        tuner = new_tuner(space, folder, record, arrays, args.max_failures)
    results = tuner.fit()
    interrupted = any(r.metrics is None or not _ended(r) for r in results) or getattr(results, "_interrupted", False)
    summary = summarize(results, space, arrays, client, record)
    record.status = "interrupted" if interrupted else "finished"
    record.save(folder)
    finish_parent_run(client, record.parent_run_id, record.status, summary)
    if interrupted:
        print(f"\nThe search was interrupted. Continue it with:\n  python -m tuner.run --space {args.space} --resume"
              f" --storage {folder.parent}")
        return 130
    return 0


def _ended(result) -> bool:
    return bool(result.metrics) and (result.metrics.get("finished") or result.metrics.get("diverged")
                                     or result.error is not None or result.metrics.get("done"))


def summarize(results, space: Space, arrays: dict, client: MlflowClient, record: SearchRecord) -> dict:
    """Print the top trials and the best config; evaluate the best trial's checkpoint on the test set."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        value = metrics.get(space.metric)
        if value is None or not math.isfinite(value):
            value = None
        rows.append((value, result, trial_outcome(metrics, result.error is not None)))
    scored = sorted([r for r in rows if r[0] is not None], key=lambda r: r[0], reverse=space.mode == "max")
    print(f"\n{len(rows)} trials: " + ", ".join(f"{n} {o}" for o, n in _counts(r[2] for r in rows).items()))
    if not scored:
        print("No trial reported a finite validation score.")
        return {"num_trials": len(rows)}
    print(f"Top trials by final {space.metric}:")
    table = [["trial", "outcome", "epochs", space.metric, *space.params]]
    for value, result, outcome in scored[:5]:
        table.append([result.metrics.get("trial_id", "?"), outcome, str(result.metrics.get("epoch", 0)),
                      f"{value:.4f}", *(_fmt(result.config.get(k)) for k in space.params)])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    best_value, best, _ = scored[0]
    best_config = {k: best.config[k] for k in space.params if k in best.config}
    test_acc = best_test_accuracy(best, arrays)
    print(f"\nBest: trial {best.metrics.get('trial_id')}  {space.metric} {best_value:.4f}"
          + (f"  test_acc {test_acc:.4f} (from its last checkpoint)" if test_acc is not None else ""))
    print("Best config: " + ", ".join(f"{k}={_fmt(v)}" for k, v in best_config.items()))
    trial_id = best.metrics.get("trial_id")
    if test_acc is not None:
        _log_test_acc(client, record.parent_run_id, trial_id, test_acc)
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


def _log_test_acc(client: MlflowClient, parent_run_id: str, trial_id: str, test_acc: float) -> None:
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                                               f"tags.`dt.trial_id` = '{trial_id}'")
    for run in runs:
        client.log_metric(run.info.run_id, "test_acc", test_acc)


def _counts(items) -> dict:
    counts: dict = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)

