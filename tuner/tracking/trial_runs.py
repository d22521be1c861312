"""MLflow logging for a search: a Tune callback that writes one child run per trial (its parent:
tuner/tracking/parent_run.py).

The Ray driver is the only writer (trial workers never touch MLflow), and every call names its run id
explicitly through an MlflowClient -- no mlflow.start_run() / active-run global state. The layout written
here is the contract the report reads: see the MLflow layout notes in the README.

A search can be interrupted and resumed (Tuner.restore), with a fresh driver process: child runs are found
again by their `dt.trial_id` tag and the epochs already logged are read back, so a resumed trial keeps its one
run and a redone epoch adds no second point. On the first step of a resumed search the child runs are made to
agree with the trials Ray restored (`reconcile`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from tuner.config.keys import applicable_params
from tuner.config.schema import resolve
from tuner.errors import error_line
from tuner.outcome import finite_number, trial_error_text, trial_outcome
from tuner.tracking.parent_run import log_params
from tuner.tracking.store import (
    ERROR,
    MODEL,
    OUTCOME,
    PARENT,
    ROLE,
    TRAINER,
    TRIAL_ID,
    Role,
    child_runs,
    mlflow_client,
    tag_filter,
)
from tuner.tracking.views import trial_number, trial_run_name
from tuner.trial.metric_names import SCHEDULED_LR, is_block_metric

# per-epoch metrics copied from a trial's result to its child run (Ray's own bookkeeping keys are left out)
EPOCH_METRICS = ("val_acc", "val_loss", "train_loss", "train_acc", SCHEDULED_LR, "epoch_s", "images_per_s")


# ---------------------------------------------------------------------------------------------- child runs


class MLflowTracker(Callback):
    """Tune callback, run in the driver: one nested child run per trial under `parent_run_id`.

    base_tags go on every child run (e.g. {'dt.trainer': 'dgl', 'dt.model': 'vgg16'}); a trial's own
    config['trainer'] / config['model'], when present, win.
    """

    def __init__(
        self,
        tracking_uri: str,
        parent_run_id: str,
        base_tags: dict | None = None,
        searched: tuple = (),
        extra_metrics: tuple = (),
    ):
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.base_tags = dict(base_tags or {})
        self.searched = tuple(searched)  # the searched keys, in the space's order: the first few name the runs
        self.extra_metrics = tuple(extra_metrics)  # per-epoch metrics beyond EPOCH_METRICS (a study's test_acc)
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._experiment_id = ""  # the parent run's, read when the client is made
        self._run_ids: dict[str, str] = {}  # trial id -> child run id
        self._last_epoch: dict[str, int] = {}  # child run id -> highest epoch logged
        self._reconciled = False

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks into tuner.pkl; the client holds a database engine, and the caches are
        # rebuilt from MLflow itself on first sight of each trial.
        return {
            "tracking_uri": self.tracking_uri,
            "parent_run_id": self.parent_run_id,
            "base_tags": self.base_tags,
            "searched": self.searched,
            "extra_metrics": self.extra_metrics,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"extra_metrics": (), **state})
        self._reset()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
            self._experiment_id = self._client.get_run(self.parent_run_id).info.experiment_id
        return self._client

    def _find_run(self, trial_id: str):
        runs = child_runs(self.client, self.parent_run_id, tag_filter(TRIAL_ID, trial_id))
        return min(runs, key=lambda run: run.info.start_time) if runs else None

    def _logged_epochs(self, run) -> int:
        steps = [m.step for key in run.data.metrics for m in self.client.get_metric_history(run.info.run_id, key)]
        return max(steps, default=0)

    def _run_id(self, trial, trials: Sequence = ()) -> str:
        return self._find_or_create_run(trial, trials)[0]

    def _find_or_create_run(self, trial, trials: Sequence = ()) -> tuple[str, bool]:
        """(the trial's child run id, whether it was just created): cached, else found by its dt.trial_id tag,
        else created."""
        trial_id = trial.trial_id
        if trial_id in self._run_ids:
            return self._run_ids[trial_id], False
        run = self._find_run(trial_id)
        if run is not None:
            run_id = run.info.run_id
            self._last_epoch[run_id] = self._logged_epochs(run)
        else:
            config = dict(trial.config)
            tags = {
                PARENT: self.parent_run_id,
                ROLE: Role.TRIAL,
                TRIAL_ID: trial_id,
                OUTCOME: "running",
                **self.base_tags,
            }
            for key, tag in (("trainer", TRAINER), ("model", MODEL)):
                if key in config:
                    tags[tag] = str(config[key])
            run_name = trial_run_name(
                trial_number(trial_id, [t.trial_id for t in trials]), config, list(getattr(self, "searched", ()))
            )
            run_id = self.client.create_run(self._experiment_id, run_name=run_name, tags=tags).info.run_id
            # the trial's effective config, resolved as the trainable resolves it: params to filter runs by (less
            # the keys its trainer does not read, sim_weight without predsim, ...), config.json to read it back exactly
            effective = resolve(config).model_dump()
            log_params(self.client, run_id, applicable_params(effective))
            self.client.log_dict(run_id, effective, "config.json")
            self._last_epoch[run_id] = 0
        self._run_ids[trial_id] = run_id
        return run_id, run is None

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        # a new search has no trials at its first step; a restored one has all of them
        if not self._reconciled and trials:
            self.reconcile(trials)
        self._reconciled = True

    def reconcile(self, trials: list) -> None:
        """After a restore: end the runs of trials that ended (their driver died before it could), and delete the
        runs of trials Ray does not know -- started after its last saved state, they will not come back (the
        searcher, restored from the same state, suggests again in their place). Runs of trials that will continue
        are left to on_trial_start, which reopens them."""
        by_id = {trial.trial_id: trial for trial in trials}
        for run in child_runs(self.client, self.parent_run_id):
            trial = by_id.get(run.data.tags.get(TRIAL_ID))
            if trial is None:
                self.client.delete_run(run.info.run_id)
            elif run.info.status in ("RUNNING", "KILLED") and trial.status in ("TERMINATED", "ERROR"):
                self._run_ids[trial.trial_id] = run.info.run_id
                self._end(trial, error=trial.status == "ERROR")

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        run_id, created = self._find_or_create_run(trial, trials)
        if not created:
            # a restarted trial (retried after an error, or resumed after its run was closed): running again
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, OUTCOME, "running")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        run_id = self._run_id(trial, trials)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        if epoch <= self._last_epoch[run_id]:
            return  # redone after a restore: this epoch already has its points
        now = int(time.time() * 1000)
        # NaN/inf are skipped: MLflow stores them but they break its plots; divergence shows in dt.outcome
        metrics = [
            Metric(key, float(value), now, epoch)
            for key, value in result.items()
            if (key in EPOCH_METRICS or key in self.extra_metrics or is_block_metric(key)) and finite_number(value)
        ]
        self.client.log_batch(run_id, metrics=metrics)
        self._last_epoch[run_id] = epoch

    def _end(self, trial, error: bool) -> None:
        run_id = self._run_id(trial)
        outcome = trial_outcome(trial.last_result, error)
        self.client.set_tag(run_id, OUTCOME, outcome)
        self.client.set_terminated(run_id, status="FINISHED" if outcome in ("completed", "stopped") else "FAILED")
        if not error:
            self._log_block_figure(run_id, trial)

    def _log_block_figure(self, run_id: str, trial) -> None:
        from tuner.tracking.block_figure import log_block_figure

        try:
            log_block_figure(
                self.client,
                run_id,
                self.client.get_run(run_id).info.run_name,
                str(trial.config.get("trainer", "")),
                trial.last_result or {},
            )
        except Exception as error:  # a figure is a convenience: never the reason a search stops
            print(f"warning: no accuracy-by-block figure for trial {trial.trial_id} ({error})", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, error=True)
        self._record_error(self._run_id(trial), trial)

    def _record_error(self, run_id: str, trial) -> None:
        """Why the trial failed, where a researcher looks: the exception line as tag `dt.error`, and Ray's error
        file (its last failure, with the stack it was raised in) as the run's artifact `error.txt`."""
        text = trial_error_text(trial)
        if text:
            self.client.set_tag(run_id, ERROR, error_line(text))
            self.client.log_text(run_id, text, "error.txt")
