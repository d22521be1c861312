"""The pieces that plug into Ray Tune: trial outcomes, the honest Optuna searcher, the MLflow tracker.

Unit tests drive the searcher and the tracker by hand (no Ray cluster); the slow test runs a real 6-trial
Tuner with ASHA on a toy function trainable and checks what Optuna and MLflow ended up holding.
"""

import json
import math
import pickle
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from helpers import UNREAD_BY_DGL_PRED
from mlflow.tracking import MlflowClient

from tuner.config.keys import applicable_params
from tuner.config.schema import KEYS, resolve
from tuner.outcome import trial_outcome
from tuner.ray_adaptations.honest_optuna import HonestOptunaSearch, make_searcher
from tuner.tracking.parent_run import close_dangling_runs, finish_parent_run, reopen_run, start_parent_run
from tuner.tracking.trial_runs import MLflowTracker
from tuner.trial.metric_names import block_metric

State = optuna.trial.TrialState


def test_trial_outcome():
    assert trial_outcome({"epoch": 4, "finished": True}, error=False) == "completed"
    assert trial_outcome({"epoch": 2}, error=False) == "stopped"
    assert trial_outcome(None, error=False) == "stopped"
    assert trial_outcome({"epoch": 2, "diverged": True}, error=False) == "diverged"
    assert trial_outcome({"epoch": 2, "diverged": True}, error=True) == "diverged"
    assert trial_outcome({"epoch": 4, "finished": True}, error=True) == "failed"
    assert trial_outcome(None, error=True) == "failed"


# ------------------------------------------------------------------------------------------------ searcher


def _searcher(max_concurrent=None):
    low = 1e-3  # a closure: Ray's stock save() (stdlib pickle) could not save this define-by-run

    def define_by_run(trial):
        trial.suggest_float("lr", low, 1.0, log=True)

    return make_searcher(
        define_by_run,
        optuna.samplers.TPESampler(seed=0),
        "val_acc",
        "max",
        points_to_evaluate=None,
        max_concurrent=max_concurrent,
    )


def _epochs(searcher, trial_id, values, **last_extra):
    """Feed per-epoch results as Tune does; returns the last one (with last_extra) for on_trial_complete."""
    result = {}
    for epoch, value in enumerate(values, start=1):
        result = {"epoch": epoch, "training_iteration": 100 + epoch, "val_acc": value}  # step must be the epoch
        if epoch == len(values):
            result.update(last_extra)
            return result  # Tune does not call on_trial_result for the result that stops a trial
        searcher.on_trial_result(trial_id, result)
    return result


def test_searcher_tells_optuna_how_each_trial_ended():
    searcher = _searcher()
    for trial_id in ("done", "asha", "nan", "crash", "pending"):
        assert 1e-3 <= searcher.suggest(trial_id)["lr"] <= 1.0
    searcher.on_trial_complete("done", _epochs(searcher, "done", [0.2, 0.4, 0.5, 0.6], finished=True))
    searcher.on_trial_complete("asha", _epochs(searcher, "asha", [0.1, 0.15]))
    searcher.on_trial_complete("nan", _epochs(searcher, "nan", [0.3, float("nan")], diverged=True))
    searcher.on_trial_result("crash", {"epoch": 1, "training_iteration": 1, "val_acc": 0.1})
    searcher.on_trial_complete("crash", None, error=True)  # Tune passes no result with error=True
    searcher.on_trial_complete("pending", None)  # never ran: removed while pending
    searcher.on_trial_complete("done", {"epoch": 4, "val_acc": 0.9, "finished": True})  # repeat: ignored

    trials = {t.number: t for t in searcher.study.get_trials()}
    done, asha, nan, crash, pending = (trials[i] for i in range(5))
    assert (done.state, done.value) == (State.COMPLETE, 0.6)
    assert done.intermediate_values == {1: 0.2, 2: 0.4, 3: 0.5, 4: 0.6}  # step = epoch, the last one included
    assert (asha.state, asha.value) == (State.PRUNED, 0.15)
    assert asha.intermediate_values == {1: 0.1, 2: 0.15}  # the stopping epoch reached Optuna
    assert nan.state == State.FAIL and nan.intermediate_values == {1: 0.3}  # NaN never reported nor told
    assert crash.state == State.FAIL
    assert pending.state == State.FAIL  # no value to be honest about; TPE leaves FAIL trials out
    assert searcher.suggest("next") is not None  # TPE still samples after all that


def test_searcher_state_survives_save_and_restore(tmp_path):
    limited = _searcher(max_concurrent=2)
    searcher = limited.searcher
    assert isinstance(searcher, HonestOptunaSearch)
    searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_result("a", {"epoch": 1, "val_acc": 0.3})
    searcher.on_trial_complete("b", _epochs(searcher, "b", [0.1, 0.2, 0.3, 0.4], finished=True))
    limited.save_to_dir(str(tmp_path), session_str="s")  # the path Tune takes when it checkpoints the experiment

    restored = _searcher(max_concurrent=2)
    restored.restore_from_dir(str(tmp_path))
    study = restored.searcher.study
    assert [t.state for t in study.get_trials()] == [State.RUNNING, State.COMPLETE]
    restored.searcher.on_trial_result("a", {"epoch": 1, "val_acc": 0.99})  # epoch redone after the restore
    restored.searcher.on_trial_complete("a", {"epoch": 2, "val_acc": 0.35})
    trial_a = study.get_trials()[0]
    assert trial_a.state == State.PRUNED and trial_a.intermediate_values == {1: 0.3, 2: 0.35}


# ------------------------------------------------------------------------------------------------- tracker


@dataclass
class FakeTrial:
    trial_id: str
    config: dict
    last_result: dict = field(default_factory=dict)
    error_file: str | None = None  # Ray's: written before it calls on_trial_error


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One store for the module (creating an MLflow database takes seconds); tests use their own experiments."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow puts artifacts (space.yaml) under ./mlruns
        yield f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture
def client(uri):
    return MlflowClient(uri)


def _parent(client, name="space"):
    return start_parent_run(
        client,
        name,
        f"{name}-20261128-021500",
        {"dt.space": name, "dt.trainer": "dgl"},
        {"trainer": "dgl", "epochs": 4},
        "name: space\n",
    )


def _children(client, parent_run_id):
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")


def _steps(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_tracker_is_idempotent_across_a_driver_restart(client, uri, tmp_path):
    parent = _parent(client, "restart")
    trial = FakeTrial("toy_00000", {"trainer": "dgl", "model": "basiccnn", "lr": 0.1})
    tracker = MLflowTracker(uri, parent, {"dt.trainer": "backprop", "dt.model": "vgg11"})
    tracker.on_trial_start(iteration=0, trials=[trial], trial=trial)
    for epoch in (1, 2):
        tracker.on_trial_result(
            0,
            [trial],
            trial,
            {
                "epoch": epoch,
                "val_acc": 0.1 * epoch,
                "val_loss": float("nan"),
                block_metric(1, "val"): 0.05 * epoch,
                "training_iteration": epoch,
                "time_total_s": 1.0,
                "trainer": "dgl",
            },
        )

    restarted = pickle.loads(pickle.dumps(tracker))  # what Tune keeps of it in tuner.pkl: no client, no caches
    restarted.on_trial_start(0, [trial], trial)
    restarted.on_trial_result(0, [trial], trial, {"epoch": 2, "val_acc": 0.99})  # redone epoch: no second point
    restarted.on_trial_result(0, [trial], trial, {"epoch": 3, "val_acc": 0.3})
    again = MLflowTracker(uri, parent, {})  # and a fresh instance that never saw the start
    again.on_trial_result(0, [trial], trial, {"epoch": 3, "val_acc": 0.77})
    trial.last_result = {"epoch": 3, "val_acc": 0.3, "finished": True}
    again.on_trial_complete(0, [trial], trial)

    (run,) = _children(client, parent)
    assert run.info.run_name == "#1 dgl" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["dt.role"], tags["dt.trial_id"], tags["dt.outcome"]) == ("trial", "toy_00000", "completed")
    assert (tags["dt.trainer"], tags["dt.model"]) == ("dgl", "basiccnn")  # the trial's config wins over base tags
    # params: only the keys a dgl trial with the flatten_mlp head, local_loss=pred, sgd and a cosine schedule reads
    assert set(run.data.params) == set(KEYS) - UNREAD_BY_DGL_PRED
    assert run.data.params["lr"] == "0.1"
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))).read_text())
    assert logged == resolve(trial.config).model_dump()  # the resolved config, exactly (params are strings)
    assert _steps(client, run.info.run_id, "val_acc") == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert _steps(client, run.info.run_id, block_metric(1, "val")) == [(1, 0.05), (2, 0.1)]
    assert "val_loss" not in run.data.metrics  # NaN skipped
    assert not {"training_iteration", "time_total_s", "epoch"} & set(run.data.metrics)  # Ray's bookkeeping left out


def test_tracker_errors_and_dangling_runs(client, uri, tmp_path):
    parent = _parent(client, "errors")
    tracker = MLflowTracker(uri, parent, {"dt.trainer": "dgl", "dt.model": "vgg11"})
    crashed, diverged, cut_off = (FakeTrial(f"toy_0000{i}", {"lr": 0.1}) for i in range(3))
    crashed.error_file = str(tmp_path / "error.txt")
    Path(crashed.error_file).write_text(  # as Ray writes it, colours included
        "Failure # 1 (occurred at 2026-11-28_06-42-50)\n\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1)\n"
        '  File "models/trainers.py", line 9, in train_step\ntorch.OutOfMemoryError: CUDA out of memory.\n'
    )
    for trial in (crashed, diverged, cut_off):
        tracker.on_trial_start(0, [], trial)
        tracker.on_trial_result(0, [], trial, {"epoch": 1, "val_acc": 0.1})
    tracker.on_trial_error(0, [], crashed)
    diverged.last_result = {"epoch": 2, "val_acc": float("nan"), "diverged": True}
    tracker.on_trial_result(0, [], diverged, diverged.last_result)
    tracker.on_trial_complete(0, [], diverged)

    assert close_dangling_runs(client, parent) == [tracker._run_id(cut_off)]
    runs = {run.data.tags["dt.trial_id"]: run for run in _children(client, parent)}
    assert {name: (run.info.status, run.data.tags["dt.outcome"]) for name, run in runs.items()} == {
        "toy_00000": ("FAILED", "failed"),
        "toy_00001": ("FAILED", "diverged"),
        "toy_00002": ("FAILED", "failed"),
    }
    assert runs["toy_00000"].data.tags["dt.trainer"] == "dgl"  # base tags when the config does not say
    # why it crashed: the exception line, and the error file (without terminal colours) as an artifact
    assert runs["toy_00000"].data.tags["dt.error"] == "torch.OutOfMemoryError: CUDA out of memory."
    saved = Path(client.download_artifacts(runs["toy_00000"].info.run_id, "error.txt", str(tmp_path / "got")))
    assert saved.read_text().startswith("Failure # 1") and "\x1b" not in saved.read_text()
    assert "dt.error" not in runs["toy_00001"].data.tags  # diverged: no exception

    # a resumed search restarts the cut-off trial: the same run, running again
    MLflowTracker(uri, parent, {}).on_trial_start(0, [], cut_off)
    assert len(_children(client, parent)) == 3
    run = client.get_run(tracker._run_id(cut_off))
    assert (run.info.status, run.data.tags["dt.outcome"]) == ("RUNNING", "running")


def test_parent_run_lifecycle(client):
    parent = _parent(client)
    run = client.get_run(parent)
    assert run.info.run_name == "space-20261128-021500" and run.info.status == "RUNNING"
    assert (run.data.tags["dt.role"], run.data.tags["dt.status"], run.data.tags["dt.space"]) == (
        "search",
        "running",
        "space",
    )
    assert run.data.params == {"trainer": "dgl", "epochs": "4"}
    with open(client.download_artifacts(parent, "space.yaml")) as f:
        assert f.read() == "name: space\n"

    finish_parent_run(client, parent, "interrupted", {"num_trials": 3})
    assert client.get_run(parent).info.status == "KILLED"
    reopen_run(client, parent)
    assert client.get_run(parent).data.tags["dt.status"] == "running"
    summary = {
        "best_val_acc": 0.6,
        "best_test_acc": 0.58,
        "num_trials": 6,
        "best_trial_id": "toy_00003",
        "best_config": {"lr": 0.1},
    }
    finish_parent_run(client, parent, "finished", summary)
    finish_parent_run(client, parent, "finished", summary)  # finishing twice with the same best is fine
    run = client.get_run(parent)
    assert (run.info.status, run.data.tags["dt.status"], run.data.tags["dt.best_trial_id"]) == (
        "FINISHED",
        "finished",
        "toy_00003",
    )
    assert run.data.metrics == {"best_val_acc": 0.6, "best_test_acc": 0.58, "num_trials": 6}
    assert run.data.params["best.lr"] == "0.1"
    with pytest.raises(ValueError, match="status"):
        finish_parent_run(client, parent, "done", {})
    assert _parent(client) != parent  # a second search in the same experiment: a second parent


# ------------------------------------------------------------------------------------------ a real search


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        # Ray 2.60 turns token auth on for a new local cluster (RAY_AUTH_MODE unset) and would write a token to
        # ~/.ray/auth_token; a token in the environment (inherited by the workers) keeps auth on and the home
        # directory untouched. Setting RAY_AUTH_MODE here does not work: ray was imported already and cached
        # its config, and only the unset-mode path refreshes it.
        env.delenv("RAY_AUTH_MODE", raising=False)
        env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ray
        ray.shutdown()


LRS = [0.3, 0.2, 0.9, 0.05, 0.01, 0.001]  # enqueued in this order: 0.9 diverges, 0.001 crashes


@pytest.mark.slow
def test_search_with_asha_optuna_and_mlflow(ray_cluster, client, uri, tmp_path):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    def toy_trainable(config):  # defined here so Ray pickles it by value (workers cannot import tests/)
        lr = config["lr"]
        if lr < 0.002:
            raise RuntimeError("toy crash")
        for epoch in range(1, config["epochs"] + 1):
            if lr > 0.5 and epoch == 2:
                tune.report({"epoch": epoch, "val_acc": float("nan"), "train_loss": float("inf"), "diverged": True})
                return
            tune.report(
                {
                    "epoch": epoch,
                    "val_acc": lr**0.25 * epoch / 4,
                    "train_loss": 1 / epoch,
                    "block1_val_acc": lr * epoch / 8,
                    "finished": epoch == config["epochs"],
                }
            )

    def define_by_run(trial):
        trial.suggest_float("lr", 1e-3, 1.0, log=True)

    parent = _parent(client, "toy")
    tracker = MLflowTracker(uri, parent, {"dt.trainer": "dgl", "dt.model": "basiccnn"})
    limited = make_searcher(
        define_by_run,
        optuna.samplers.TPESampler(seed=0),
        "val_acc",
        "max",
        points_to_evaluate=[{"lr": lr} for lr in LRS],
        max_concurrent=2,
    )
    tuner = tune.Tuner(
        toy_trainable,
        param_space={"trainer": "dgl", "model": "basiccnn", "epochs": 4},
        tune_config=tune.TuneConfig(
            metric="val_acc",
            mode="max",
            search_alg=limited,
            num_samples=len(LRS),
            scheduler=ASHAScheduler(max_t=4, grace_period=1, reduction_factor=2),
        ),
        run_config=tune.RunConfig(name="toy", storage_path=str(tmp_path / "ray"), verbose=0, callbacks=[tracker]),
    )
    grid = tuner.fit()

    # the ground truth, from Ray's own record: each trial's last result (an errored one has only Ray's defaults)
    last = {result.metrics["trial_id"]: result.metrics for result in grid}
    lr_of = {result.metrics["trial_id"]: result.config["lr"] for result in grid}
    outcome = {
        result.metrics["trial_id"]: trial_outcome(result.metrics, error=result.error is not None) for result in grid
    }
    assert sorted(lr_of.values()) == sorted(LRS)
    counts = {o: sum(1 for v in outcome.values() if v == o) for o in ("completed", "stopped", "diverged", "failed")}
    assert [lr_of[t] for t, o in outcome.items() if o == "diverged"] == [0.9]
    assert [lr_of[t] for t, o in outcome.items() if o == "failed"] == [0.001]
    assert counts["completed"] >= 1 and counts["stopped"] >= 1, counts  # ASHA let the best through and cut some

    # Optuna: every trial told, with the state its outcome calls for
    ot_trials = sorted(limited.searcher.study.get_trials(), key=lambda t: t.number)
    assert len(ot_trials) == len(LRS) and all(t.state.is_finished() for t in ot_trials)
    expected_state = {
        "completed": State.COMPLETE,
        "stopped": State.PRUNED,
        "diverged": State.FAIL,
        "failed": State.FAIL,
    }
    for ot_trial in ot_trials:
        (trial_id,) = [t for t, lr in lr_of.items() if lr == ot_trial.params["lr"]]
        assert ot_trial.state == expected_state[outcome[trial_id]], (trial_id, outcome[trial_id])
        if ot_trial.state in (State.COMPLETE, State.PRUNED):
            epochs = last[trial_id]["epoch"]
            assert sorted(ot_trial.intermediate_values) == list(range(1, epochs + 1))
            assert ot_trial.value == pytest.approx(last[trial_id]["val_acc"])
    # what Tune saved of the searcher restores into a fresh one (the path Tuner.restore takes)
    restored = make_searcher(define_by_run, optuna.samplers.TPESampler(seed=0), "val_acc", "max", max_concurrent=2)
    restored.restore_from_dir(str(tmp_path / "ray" / "toy"))
    assert [t.state for t in restored.searcher.study.get_trials()] == [t.state for t in ot_trials]

    # MLflow: one child per trial, per-epoch points at step = epoch, outcome tags, nothing left running
    runs = {run.data.tags["dt.trial_id"]: run for run in _children(client, parent)}
    assert sorted(runs) == sorted(outcome) and len(_children(client, parent)) == len(LRS)
    for trial_id, run in runs.items():
        assert run.data.tags["dt.outcome"] == outcome[trial_id]
        assert run.info.status == ("FINISHED" if outcome[trial_id] in ("completed", "stopped") else "FAILED")
        # every key that applies to a dgl trial with its default head, loss, optimizer and schedule
        assert set(run.data.params) == set(
            applicable_params(resolve({"trainer": "dgl", "model": "basiccnn"}).model_dump())
        )
        if "epoch" in last[trial_id]:
            finite_epochs = last[trial_id]["epoch"] - (outcome[trial_id] == "diverged")
            assert [s for s, _ in _steps(client, run.info.run_id, "val_acc")] == list(range(1, finite_epochs + 1))
            assert all(math.isfinite(v) for _, v in _steps(client, run.info.run_id, "train_loss"))
    assert close_dangling_runs(client, parent) == []
