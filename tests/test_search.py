"""End to end, as a user runs it: `python -m tuner.run` on a tiny space over a generated CIFAR-10 folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakedata import learnable_arrays, write_cifar_folder
from helpers import local_store
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent

TINY_SPACE = """
trainer: backprop
model: basiccnn
fixed: {width: 0.0625, epochs: 2, batch_size: 50, train_subset: 400, val_size: 200, eval_batch_size: 200}
search:
  lr: {type: loguniform, low: 1.0e-4, high: 1.0e+5}
scheduler: {type: asha, max_t: 2, grace_period: 1, reduction_factor: 2}
searcher:
  type: optuna_tpe
  seed: 0
  n_startup_trials: 3
  # a good rate first, a hopeless one (ASHA should stop it), one that diverges; the fourth is TPE's
  points_to_evaluate: [{lr: 0.05}, {lr: 1.0e-4}, {lr: 1.0e+5}]
num_samples: 4
max_concurrent: 1
resources: {cpu: 1, gpu: 0}
metric: val_acc
mode: max
"""


def run_cli(*args, cwd, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tuner.run", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, learnable_arrays(1000, 200, seed=3))
    return root


@pytest.mark.slow
def test_tiny_search_end_to_end(tmp_path, fake_data):
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli(
        "--space",
        str(space),
        "--data-dir",
        str(fake_data),
        "--storage",
        str(tmp_path / "runs"),
        "--mlflow-uri",
        uri,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # the driver's own lines: a worker's (prefixed with its pid=) is Ray's to print; its shutdown exit is kept quiet
    # (tuner/ray_adaptations/interrupts.py), any other would show in the trial's outcome
    assert [line for line in output.splitlines() if "Traceback" in line and "pid=" not in line] == []
    assert "Checkpoint successfully created" not in output
    assert "Best config: lr=" in result.stdout

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dt.role") == "search"]
    children = [r for r in runs if r.data.tags.get("dt.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["dt.status"] == "finished"
    assert 0 < parent.data.metrics["best_val_acc"] <= 1 and "best_test_acc" in parent.data.metrics
    assert "best.lr" in parent.data.params
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert all(r.info.status != "RUNNING" for r in runs)

    outcomes = {r.data.tags["dt.trial_id"]: r.data.tags["dt.outcome"] for r in children}
    by_lr = {float(r.data.params["lr"]): r for r in children}
    assert by_lr[1e5].data.tags["dt.outcome"] == "diverged" and by_lr[1e5].info.status == "FAILED"
    assert by_lr[0.05].data.tags["dt.outcome"] == "completed"
    assert by_lr[1e-4].data.tags["dt.outcome"] == "stopped"
    # one val_acc point per epoch run: completed -> both; stopped -> 1 (ASHA's only rung below max_t: a trial it
    # stops at max_t has finished); diverged -> up to the epoch it diverged in. That is the 1st for lr=1e5, but the
    # 4th trial (TPE's pick) can diverge in its 2nd: e.g. lr=400 has a finite 1st epoch whose val_acc (0.1) ties
    # ASHA's cutoff, so it goes on, and a NaN loss in the 2nd.
    allowed = {"completed": (2,), "stopped": (1,), "diverged": (1, 2)}
    for run in children:
        outcome = run.data.tags["dt.outcome"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) in allowed[outcome], (outcome, steps)
        assert run.data.params["trainer"] == "backprop" and run.data.params["width"] == "0.0625"
    assert len(client.get_metric_history(by_lr[1e5].info.run_id, "val_acc")) == 1
    # test_acc goes on the best trial only; with a tie for the best val_acc the search picks by trial id
    top = max(r.data.metrics["val_acc"] for r in children if "val_acc" in r.data.metrics)
    tested = [r for r in children if "test_acc" in r.data.metrics]
    assert len(tested) == 1 and tested[0].data.metrics["val_acc"] == top

    # what Optuna was told: completed -> COMPLETE, stopped by ASHA -> PRUNED, diverged -> FAIL
    import optuna

    from tuner.ray_adaptations.honest_optuna import HonestOptunaSearch

    folder = Path(parent.data.tags["dt.storage"])
    searcher = HonestOptunaSearch()
    searcher.restore_from_dir(str(folder))
    want = {
        "completed": optuna.trial.TrialState.COMPLETE,
        "stopped": optuna.trial.TrialState.PRUNED,
        "diverged": optuna.trial.TrialState.FAIL,
    }
    assert len(searcher._ot_trials) == 4
    assert {trial_id: want[outcome] for trial_id, outcome in outcomes.items()} == {
        trial_id: searcher.study.trials[trial.number].state for trial_id, trial in searcher._ot_trials.items()
    }
    pruned = [t for t in searcher.study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(t.intermediate_values for t in pruned)

    # where researchers look: the study in the folder's optuna.db, the links, the best trial, the figures
    stored = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}")
    assert sorted(t.state.name for t in stored.trials) == sorted(want[o].name for o in outcomes.values())
    link = f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey="
    assert link in result.stdout
    assert "mlflow.sharedViewState.trials-by-val_acc" in client.get_experiment(experiment.experiment_id).tags
    assert "Ray's" not in result.stdout and "Trial status" not in output  # progress lines, not Ray's table
    assert "[00:" in result.stdout and " of 4 | best val_acc " in result.stdout
    assert [r.data.tags.get("dt.best") for r in tested] == ["true"]
    assert sum(r.data.tags.get("dt.best") == "true" for r in children) == 1
    assert sorted(r.info.run_name.split()[0] for r in children) == ["#1", "#2", "#3", "#4"]
    best_name = tested[0].info.run_name
    assert parent.data.tags["mlflow.note.content"].startswith(f"Best: {best_name} (Ray trial ")
    # the console names trials as the runs do: the best one's number in the summary and first in the top table
    number = best_name.split()[0]
    assert f"Best: trial {number} (Ray trial {tested[0].data.tags['dt.trial_id']})" in result.stdout
    top = result.stdout.split("Top trials by final val_acc (those that ran every epoch first):\n")[1].splitlines()
    assert top[1].split()[0] == number
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"figures/history_tiny.png", "figures/curves_basiccnn.png"} <= figures


def test_dry_run_starts_nothing(tmp_path):
    result = run_cli(
        "--space",
        "dgl_quick",
        "--dry-run",
        *local_store(tmp_path),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "nothing was started" in result.stdout and "aux_width" in result.stdout
    assert list(tmp_path.iterdir()) == []


VALID = (
    "trainer: dgl\nmodel: vgg16\nfixed: {width: 0.5}\n"
    "search: {lr: {type: loguniform, low: 0.01, high: 0.1}}\nnum_samples: 2\n"
)


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("low: 0.01, high: 0.1", "low: 0.1, high: 0.01", "search.lr"),
        ("width: 0.5", "widht: 0.5", "widht"),
        ("trainer: dgl", "trainer: sgd", "trainer"),
        ("{lr: {type: loguniform, low: 0.01, high: 0.1}}", "{aux_width: {type: choice, values: []}}", "aux_width"),
        ("type: loguniform, low: 0.01", "type: loguniform, low: 0.0", "search.lr"),
        ("num_samples: 2", "num_samples: two", "num_samples"),
    ],
)
def test_bad_space_is_one_line_exit_2_and_creates_nothing(tmp_path, old, new, key):
    space = tmp_path / "bad.yaml"
    assert old in VALID
    space.write_text(VALID.replace(old, new))
    result = run_cli(
        "--space",
        str(space),
        *local_store(tmp_path),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml" in lines[0] and key in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


PER_OPTIMIZER_SPACE = """
trainer: dni
model: basiccnn
fixed: {width: 0.0625, epochs: 1, batch_size: 50, train_subset: 400, val_size: 200, eval_batch_size: 200}
search:
  optimizer: {type: choice, values: [sgd, adamw]}
  lr:
    - {type: loguniform, low: 1.0e-4, high: 3.0e-3, when: {optimizer: adamw}}
    - {type: loguniform, low: 0.003, high: 0.1, when: {optimizer: sgd}}
searcher:
  type: random
  seed: 1
  points_to_evaluate: [{optimizer: adamw, lr: 3.0e-4}]
num_samples: 5
max_concurrent: 1
"""


@pytest.mark.slow
def test_trials_of_a_search_draw_lr_from_their_optimizers_range(tmp_path, fake_data):
    space = tmp_path / "per_optimizer.yaml"
    space.write_text(PER_OPTIMIZER_SPACE)
    result = run_cli("--space", str(space), "--data-dir", str(fake_data), *local_store(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("per_optimizer").experiment_id])
    children = [r for r in runs if r.data.tags.get("dt.role") == "trial"]
    drawn = sorted((r.data.params["optimizer"], float(r.data.params["lr"])) for r in children)
    assert len(drawn) == 5 and ("adamw", 3e-4) in drawn and {o for o, _ in drawn} == {"sgd", "adamw"}, drawn
    ranges = {"adamw": (1e-4, 3e-3), "sgd": (0.003, 0.1)}
    assert all(ranges[optimizer][0] <= lr <= ranges[optimizer][1] for optimizer, lr in drawn), drawn
