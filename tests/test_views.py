"""What a researcher sees: metric names, MLflow links/names/params, the progress line, the Optuna storage."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import optuna
import pytest
from helpers import UNREAD_BY_DGL_PRED
from mlflow.tracking import MlflowClient
from ray import cloudpickle

from tuner.config.keys import applicable_params
from tuner.config.schema import resolve
from tuner.ray_adaptations.honest_optuna import HonestOptunaSearch
from tuner.search import optuna_storage
from tuner.search.progress import ProgressLine, clock, eta_seconds, progress_line
from tuner.tracking import views as mlflow_views
from tuner.trial.metric_names import block_accuracies, block_metric, is_block_metric


def test_block_metrics_sort_in_depth_order_in_their_own_section():
    names = [block_metric(b, "val") for b in range(1, 14)]
    assert names[0] == "blocks/val_acc_b01" and names[12] == "blocks/val_acc_b13"
    assert sorted(names) == names  # block 10 after block 9, as MLflow's chart view sorts them
    assert all(is_block_metric(n) for n in names) and not is_block_metric("val_acc")
    assert block_accuracies({n: b / 10 for b, n in enumerate(names[:3], 1)}, "val") == [0.1, 0.2, 0.3]


def test_accuracies_are_exact_fractions_of_counts():
    import torch

    from models.trainer_base import Trainer

    metrics = Trainer._accuracies(Trainer.__new__(Trainer), torch.tensor([67, 134]), 400, "acc")
    assert metrics["acc"] == 0.335  # float32 division gives 0.33500000834465027


def test_links_open_the_ranked_trials_in_the_model_training_view():
    url = mlflow_views.trials_url("sqlite:////x/mlflow.db", "7", "val_acc")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == mlflow_views.LOCAL_UI
    path, query = parts.fragment.split("?", 1)
    assert path == "/experiments/7/runs"
    assert parse_qs(query) == {"workflowType": ["machine_learning"], "viewStateShareKey": ["trials-by-val_acc"]}
    charts = mlflow_views.trials_url("http://mlflow:5000/", "7", "val_loss", charts=True)
    assert charts.startswith("http://mlflow:5000/#/experiments/7/runs?") and "compareRunsMode=CHART" in charts
    assert mlflow_views.run_url("http://mlflow:5000", "7", "abc").endswith("/runs/abc?workflowType=machine_learning")
    assert mlflow_views.ui_command("http://mlflow:5000") is None
    view = mlflow_views.trials_view("val_loss", "min", [])
    assert view["orderByAsc"] is True
    # the chart view keeps these sections in this order: the headline charts first, the per-block ones after
    assert view["isAccordionReordered"] and view["compareRunCharts"] == []
    assert [s["name"] for s in view["compareRunSections"]] == ["Model metrics", "blocks", "System metrics"]


def test_only_the_params_a_trial_reads_are_logged():
    defaults = resolve().model_dump()
    dgl_pred = {**defaults, "trainer": "dgl", "local_loss": "pred"}
    assert set(applicable_params(dgl_pred)) == set(defaults) - UNREAD_BY_DGL_PRED
    assert "aux_convs" in applicable_params({**dgl_pred, "aux_head": "conv"})
    assert "sg_kernel" in applicable_params({**defaults, "trainer": "dni"})
    assert "sim_weight" in applicable_params({**dgl_pred, "local_loss": "predsim"})
    backprop = applicable_params({**defaults, "trainer": "backprop", "local_loss": "predsim"})
    assert not {"aux_head", "local_loss", "sim_weight", "num_blocks"} & set(backprop)
    adamw_step = applicable_params({**defaults, "optimizer": "adamw", "schedule": "step"})
    assert {"lr_step_epochs", "lr_gamma"} <= set(adamw_step) and not {"momentum", "nesterov"} & set(adamw_step)


def test_trial_run_names_are_readable():
    config = {
        "trainer": "dgl",
        "lr": 0.0123456,
        "local_loss": "pred",
        "sim_weight": 0.7,
        "aux_head": "conv",
        "dropout": 0.1,
    }
    name = mlflow_views.trial_run_name(4, config, ["lr", "sim_weight", "local_loss", "aux_head", "dropout"])
    assert name == "#4 dgl lr=0.01235 local_loss=pred aux_head=conv"  # sim_weight does not apply: skipped


def test_parent_description_names_the_best_trial():
    summary = {
        "best_trial_id": "ab12c_00001",
        "best_val_acc": 0.41,
        "best_test_acc": 0.4,
        "num_trials": 4,
        "best_config": {"lr": 0.05},
    }
    text = mlflow_views.parent_description(
        summary, "val_acc", {"completed": 2, "stopped": 2}, ["history.png"], "#2 dgl lr=0.05"
    )
    assert (
        text.startswith("Best: #2 dgl lr=0.05 (Ray trial ab12c_00001, tagged dt.best)")
        and "val_acc 0.4100" in text
        and "test_acc 0.4000" in text
    )
    assert "lr=0.05" in text and "2 completed, 2 stopped" in text and "history.png" in text


def test_experiment_description_and_best_trial_tag(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("space", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment_id).info.run_id
    children = [
        client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, "dt.trial_id": f"t_0000{i}"})
        for i in range(2)
    ]
    mlflow_views.describe_experiment(client, experiment_id, "Quick DGL.", "val_acc", "max", ["lr", "dropout"])
    assert mlflow_views.mark_best_trial(client, parent, "t_00001") == children[1].info.run_name
    tags = client.get_experiment(experiment_id).tags
    assert tags[mlflow_views.NOTE] == "Quick DGL." and tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.trials-by-val_acc"])  # what viewStateShareKey= opens
    assert view == mlflow_views.trials_view("val_acc", "max", ["lr", "dropout"])
    assert {k: view[k] for k in ("searchFilter", "orderByKey", "orderByAsc", "selectedColumns")} == {
        "searchFilter": "tags.`dt.role` = 'trial'",
        "orderByKey": "metrics.`val_acc`",
        "orderByAsc": False,
        "selectedColumns": [
            "metrics.`val_acc`",
            "metrics.`train_acc`",
            "metrics.`val_loss`",
            "tags.`dt.outcome`",
            "params.`lr`",
            "params.`dropout`",
        ],
    }
    best = client.search_runs([experiment_id], "tags.`dt.best` = 'true'")
    assert [r.info.run_id for r in best] == [children[1].info.run_id]


@dataclass
class FakeTrial:
    trial_id: str
    status: str
    last_result: dict = field(default_factory=dict)


def test_progress_line_says_how_far_and_how_long():
    trials = [
        FakeTrial("x_00000", "TERMINATED", {"epoch": 3, "val_acc": 0.4, "finished": True}),
        FakeTrial("x_00001", "TERMINATED", {"epoch": 1, "val_acc": 0.2}),
        FakeTrial("x_00002", "RUNNING", {"epoch": 2, "val_acc": 0.45}),
        FakeTrial("x_00003", "PENDING"),
    ]
    line = progress_line(trials, 75, num_samples=6, max_epochs=3, metric="val_acc", mode="max")
    # 6 epochs in 75 s; left: 1 (running) + 3 (pending) + 2 * 3 (not created) = 10 epochs -> 125 s at most
    assert line == (
        "[01:15] 1 done, 1 running, 1 stopped, 1 starting of 6 | best val_acc 0.4500 (#3) | #3 epoch 2/3 | ETA <= 02:05"
    )
    assert eta_seconds(trials[3:], 10, 6, 3) is None  # nothing finished yet: no rate to go by
    assert clock(3725) == "1:02:05"


def test_progress_reporter_prints_on_events_and_heartbeats():
    printed = []
    reporter = ProgressLine(2, 3, "val_acc", "max", heartbeat_s=3600, print_fn=lambda s, **kw: printed.append(s))
    trial = FakeTrial("x_00000", "RUNNING", {"epoch": 1, "val_acc": 0.3})
    assert reporter.should_report([trial])
    reporter.report([trial], False)
    assert not reporter.should_report([trial])  # nothing new, heartbeat not due
    trial.last_result = {"epoch": 2, "val_acc": 0.35}
    assert reporter.should_report([trial]) and reporter.should_report([trial], done=True)
    assert printed and "#1 epoch 1/3" in printed[0]
    reporter.report([trial], False)
    trial.last_result = {"epoch": 2, "val_acc": 0.35, "images_per_s": 900}  # a result the line does not show
    assert not reporter.should_report([trial], done=True)  # the same line again, but for the clock: not printed
    reporter.heartbeat_s = 0
    assert reporter.should_report([trial])  # the heartbeat: the clock has moved on


def test_optuna_study_lives_in_the_search_folder_and_survives_a_pickled_searcher(tmp_path):
    def space(trial):
        trial.suggest_float("lr", 1e-3, 1.0, log=True)

    storage = optuna_storage.fresh_study_storage(tmp_path, "s1")
    searcher = HonestOptunaSearch(
        space=space,
        metric="val_acc",
        mode="max",
        storage=storage,
        study_name="s1",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    searcher.suggest("a")
    searcher.on_trial_result("a", {"val_acc": 0.3, "epoch": 1})
    searcher.on_trial_complete("a", {"val_acc": 0.3, "epoch": 1})  # no `finished`: ASHA stopped it -> PRUNED
    restored = pickle.loads(cloudpickle.dumps(searcher.__dict__.copy()))  # what Ray's save/restore does
    restored["_ot_study"].ask()
    study = optuna.load_study(study_name="s1", storage=optuna_storage.storage_url(tmp_path))
    states = [t.state.name for t in study.trials]
    assert states == ["PRUNED", "RUNNING"] and study.trials[0].intermediate_values == {1: 0.3}
    assert (tmp_path / optuna_storage.STUDY_FILE).exists()
    optuna_storage.fresh_study_storage(tmp_path, "s1")  # started anew: the old trials go
    assert "s1" not in optuna.get_all_study_names(optuna_storage.storage_url(tmp_path))


def test_a_restored_searcher_takes_the_trials_from_the_storage_not_the_pickle(tmp_path):
    def space(trial):
        trial.suggest_float("lr", 1e-3, 1.0, log=True)

    optuna_storage.fresh_study_storage(tmp_path, "s1")
    first = HonestOptunaSearch(
        space=space,
        metric="val_acc",
        mode="max",
        storage=optuna_storage.open_storage(tmp_path),
        study_name="s1",
        sampler=optuna.samplers.RandomSampler(seed=0),
        points_to_evaluate=[{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}, {"lr": 0.4}],
    )
    for trial_id in ("a", "b"):
        first.suggest(trial_id)
        first.on_trial_result(trial_id, {"val_acc": 0.3, "epoch": 1})
    first.save(str(tmp_path / "snapshot.pkl"))
    # after the snapshot, before the driver died: a finished, b reported epoch 2, c asked for (no Ray trial knows it)
    first.on_trial_complete("a", {"val_acc": 0.4, "epoch": 2, "finished": True})
    first.on_trial_result("b", {"val_acc": 0.35, "epoch": 2})
    first.suggest("c")

    restored = HonestOptunaSearch()  # as Tune restores it: the object unpickled, then its last snapshot loaded
    restored.restore(str(tmp_path / "snapshot.pkl"))
    restored.on_trial_complete("a", {"val_acc": 0.4, "epoch": 2, "finished": True})  # told once: not again
    restored.on_trial_result("b", {"val_acc": 0.35, "epoch": 2})  # reported once: no warning, no second value
    restored.on_trial_result("b", {"val_acc": 0.5, "epoch": 3})
    # the points to evaluate still run: the one nobody was given, then the one c took and never ran
    assert restored.suggest("d") == {"lr": 0.4} and restored.suggest("e") == {"lr": 0.3}
    study = optuna.load_study(study_name="s1", storage=optuna_storage.storage_url(tmp_path))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING", "FAIL", "RUNNING", "RUNNING"]
    assert study.trials[0].value == 0.4 and study.trials[1].intermediate_values == {1: 0.3, 2: 0.35, 3: 0.5}


@pytest.mark.parametrize("with_blocks", [True, False])
def test_block_figure_only_for_local_learning(tmp_path, with_blocks):
    from tuner.tracking.block_figure import BLOCK_FIGURE, log_block_figure

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("space", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    result = {"epoch": 3, "val_acc": 0.4}
    if with_blocks:
        result.update({block_metric(b, "val"): 0.1 * b for b in (1, 2, 3)})
    assert log_block_figure(client, run_id, "#1 dgl", "dgl", result) is with_blocks
    assert [a.path for a in client.list_artifacts(run_id)] == ([BLOCK_FIGURE] if with_blocks else [])
