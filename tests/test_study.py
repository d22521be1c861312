"""`python -m tuner.study`: a study file is checked whole before anything is created; the confirm statistics are what
the formulas give; a tiny study runs end to end into MLflow and the report."""

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from fakedata import learnable_arrays, write_cifar_folder
from mlflow.tracking import MlflowClient

from tuner.config.study_file import load_study
from tuner.study import __main__ as study_cli
from tuner.study.opening import halving_epochs
from tuner.study.results import Candidate, blocks_rows, confirm_configs, pick_candidates
from tuner.study.tables import accuracy_rows, mean_std, welch_interval
from tuner.tracking.reader import Trial

ROOT = Path(__file__).resolve().parent.parent

TINY_STUDY = """
model: basiccnn
budget:
  fixed: {width: 0.0625, epochs: 2, batch_size: 50, train_subset: 400, val_size: 200, eval_batch_size: 200}
  search:
    lr: {type: loguniform, low: 1.0e-3, high: 0.2}
  scheduler: {type: fifo}
  searcher: {type: optuna_tpe, seed: 0, n_startup_trials: 1, points_to_evaluate: [{lr: 0.05}]}
  num_samples: 1
  max_concurrent: 2
  resources: {cpu: 1, gpu: 0}
  repetitions: 2
arms:
  backprop: {trainer: backprop}
  dgl:
    trainer: dgl
    fixed: {aux_width: 32}
    search: {num_blocks: {type: int, low: 2, high: 3}}
    points_to_evaluate: [{num_blocks: 3}]
    write_up: {num_blocks: 3}
confirm: {seeds: [1, 2]}
"""

# (a change to the tiny study, what the one line must say)
BROKEN = [
    ("arms:\n  backprop: {trainer: backprop, search: {lr: {type: uniform, low: 0.1, high: 0.2}}}\n", "search.lr"),
    ("arms:\n  backprop: {trainer: backprop, num_samples: 4}\n", "arms.backprop.num_samples: part of the shared"),
    ("arms:\n  backprop: {trainer: backprop, fixed: {epochs: 5}}\n", "arms.backprop.fixed.epochs: 'epochs' is read by"),
    ("arms:\n  backprop: {trainer: backprop, fixed: {train_subset: 100}}\n", "arms.backprop.fixed.train_subset"),
    ("arms:\n  backprop: {trainer: backprop, fixed: {lr: 0.1}}\n", "arms.backprop.fixed.lr: 'lr' is read by"),
    ("arms:\n  backprop: {trainer: backprop, fixed: {bogus: 1}}\n", "(as a search space): fixed.bogus: unknown key"),
    ("arms:\n  backprop: {trainer: sgd}\n", "arms.backprop (as a search space)"),
    ("confirm: {seeds: [0, 1, 2]}\n", "confirm.seeds: must be distinct and differ from the searches' seeds 0, 1000"),
    ("confirm: {seeds: [1]}\n", "confirm.seeds"),
    ("confirm: {reference: nobody}\n", "confirm.reference: 'nobody' is not an arm"),
    ("arms:\n  dgl: {trainer: dgl, write_up: {aux_width: 32}}\n", "write_up.aux_width: 'aux_width' is not searched"),
    (
        "arms:\n  dgl: {trainer: dgl, search: {num_blocks: {type: int, low: 2, high: 3}}, write_up: {num_blocks: 3}}\n",
        "arms.dgl.write_up: no point in points_to_evaluate has these values",
    ),
    # keys every arm's trainer reads are shared, whether or not the budget sets them
    ("arms:\n  dgl: {trainer: dgl, fixed: {batch_size: 32}}\n", "arms.dgl.fixed.batch_size: 'batch_size' is read by"),
    ("arms:\n  dgl: {trainer: dgl, fixed: {width: 0.5}}\n", "arms.dgl.fixed.width: 'width' is read by every arm's"),
    ("arms:\n  dgl: {trainer: dgl, fixed: {augment: false}}\n", "arms.dgl.fixed.augment: 'augment' is read"),
    ("arms:\n  dgl: {trainer: dgl, fixed: {optimizer: adamw}}\n", "arms.dgl.fixed.optimizer: 'optimizer' is"),
    ("arms:\n  backprop: {trainer: backprop, fixed: {label_smoothing: 0.1}}\n", "arms.backprop.fixed.label_smoothing"),
    (
        "arms:\n  dgl: {trainer: dgl, search: {dropout: {type: uniform, low: 0.0, high: 0.3}}}\n",
        "arms.dgl.search.dropout: 'dropout' is read by every arm's trainer (backprop, dgl): a shared key",
    ),
    (
        "arms:\n  dgl: {trainer: dgl, points_to_evaluate: [{momentum: 0.8}]}\n",
        "arms.dgl.points_to_evaluate[0].momentum",
    ),
    ("arms:\n  dgl: {trainer: dgl, fixed: {stages: 2}}\n", "arms.dgl.fixed.stages: 'stages' is set once, under budget"),
    ("budget:\n  search: {seed: {type: int, low: 0, high: 9}}\n", "budget.search.seed: the seed is not searched"),
    # an arm's name goes into file and run names
    ("arms:\n  ../../escape: {trainer: dgl}\n", "arms.../../escape: an arm's name must be a plain identifier"),
    ("arms:\n  dgl-k13: {trainer: dgl}\n", "arms.dgl-k13: an arm's name must be a plain identifier"),
    ("arms:\n  13: {trainer: dgl}\n", "arms.13: an arm's name must be a plain identifier"),
]


def broken_study(tmp_path, change: str) -> Path:
    """The tiny study with the top-level sections in `change` replaced."""
    import yaml

    data = yaml.safe_load(TINY_STUDY)
    for key, value in yaml.safe_load(change).items():
        data[key] = {**data[key], **value}  # an arm named replaces that arm; the others stay
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("change, message", BROKEN)
def test_a_broken_study_is_one_line_exit_2_and_creates_nothing(tmp_path, capsys, change, message):
    path = broken_study(tmp_path, change)
    storage, db = tmp_path / "runs", tmp_path / "mlflow.db"
    code = study_cli.main(["--study", str(path), "--storage", str(storage), "--mlflow-uri", f"sqlite:///{db}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "broken.yaml" in err, err
    assert message in err, err
    assert not storage.exists() and not db.exists()


def test_resume_without_an_unfinished_study_is_one_line(tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY)
    (tmp_path / "not_a_study").mkdir()
    for resume in ([], [str(tmp_path / "not_a_study")]):
        code = study_cli.main(["--study", str(tmp_path / "tiny.yaml"), "--storage", str(tmp_path), "--resume", *resume])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: --resume"), err


def test_resuming_an_edited_study_is_one_line_and_names_the_file(tmp_path, capsys):
    from argparse import Namespace

    from tuner.study.opening import locate

    path, storage = tmp_path / "tiny.yaml", tmp_path / "runs"
    path.write_text(TINY_STUDY)
    folder, record = locate(Namespace(resume=None, study=str(path), data_dir=None), load_study(str(path)), storage, "")
    folder.mkdir(parents=True)
    record.save(folder)  # as a study that started, then stopped
    resume = ["--study", str(path), "--storage", str(storage), "--resume", "--dry-run"]
    assert study_cli.main(resume) == 0  # the file as it was: resumed
    path.write_text(TINY_STUDY.replace("epochs: 2,", "epochs: 3,"))
    assert study_cli.main(resume) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: --resume {folder}: {path} was edited since this study started" in err
    assert "(line 4: 'fixed: {width: 0.0625, epochs: 2," in err and "without --resume" in err, err


def test_arms_share_the_budget_and_add_their_own_keys(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_STUDY)
    study = load_study(str(path))
    bp, dgl = study.spaces["backprop"], study.spaces["dgl"]
    assert bp.params["lr"] == dgl.params["lr"] and list(bp.params) == ["lr"] and "num_blocks" in dgl.params
    assert bp.base_config().model_dump(exclude={"trainer", "aux_width"}) == dgl.base_config().model_dump(
        exclude={"trainer", "aux_width"}
    )
    assert dgl.searcher.points_to_evaluate == [{"lr": 0.05, "num_blocks": 3}]
    assert bp.searcher.points_to_evaluate == [{"lr": 0.05}]
    assert study.write_up == {"dgl": {"num_blocks": 3}} and study.seeds == (1, 2) and study.repetitions == 2
    assert study.repetition_space("dgl", 1).fixed["seed"] == 1000 and study.confirm_seeds(1) == (1001, 1002)


def test_keys_only_some_arms_read_stay_an_arms_own(tmp_path):
    lever = (
        "arms:\n  dgl: {trainer: dgl, fixed: {aux_head: flatten_mlp, local_loss: predsim, aux_depth: 2}, "
        "search: {sim_weight: {type: uniform, low: 0.5, high: 0.99}, aux_width: {type: int, low: 32, high: 64}, "
        "num_blocks: {type: int, low: 2, high: 3}}}\n"
    )
    study = load_study(str(broken_study(tmp_path, lever)))
    assert set(study.spaces["dgl"].params) == {"lr", "sim_weight", "aux_width", "num_blocks"}
    shared = {"width", "batch_size", "epochs", "augment", "dropout", "optimizer", "seed", "train_subset", "val_size"}
    for arm in study.spaces.values():  # what the plan prints of the first arm holds for every arm
        assert {k: getattr(arm.base_config(), k) for k in shared} == {
            k: getattr(study.first.base_config(), k) for k in shared
        }


def test_the_plan_shows_what_every_arm_trains_with(tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY.replace("batch_size: 50", "batch_size: 64, dropout: 0.1"))
    assert study_cli.main(["--study", str(tmp_path / "tiny.yaml"), "--dry-run", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    shared = "every arm: width=0.0625, batch_size=64, optimizer=sgd, augment=True, dropout=0.1, label_smoothing=0"
    assert shared in out, out


def test_the_shipped_studies_load_and_the_gpu_plan_states_its_cost(capsys):
    for name in ("cpu_vgg16", "gpu_vgg16"):
        study = load_study(name)
        assert study.write_up == {"dgl": {"num_blocks": 13}}
    assert study_cli.main(["--study", "gpu_vgg16", "--dry-run", "--storage", "/nonexistent/runs"]) == 0
    out = capsys.readouterr().out
    assert "estimated GPU-hours: 14 (searching 9, confirming 4)" in out and "backprop 10" in out
    assert "nothing was started" in out


def test_halving_epochs_per_trial_by_hand():
    from tuner.config.schema import Asha, Fifo

    # rungs 10, 30, 90, then max_t 100: all trials run 10 epochs, 1/3 run 20 more, 1/9 run 60 more, 1/27 run 10 more
    assert halving_epochs(Asha(max_t=100, grace_period=10, reduction_factor=3), 100) == pytest.approx(
        10 + 20 / 3 + 60 / 9 + 10 / 27
    )
    assert halving_epochs(Fifo(), 8) == 8


def test_welch_interval_and_mean_std_match_the_formulas():
    a, b = [0.80, 0.82, 0.84], [0.70, 0.75, 0.72]
    assert mean_std(a) == pytest.approx((0.82, 0.02))
    va, vb = statistics.variance(a) / 3, statistics.variance(b) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)  # Welch-Satterthwaite
    from scipy.stats import t

    half = t.ppf(0.975, df) * math.sqrt(va + vb)
    diff = 0.82 - statistics.fmean(b)
    assert welch_interval(a, b) == pytest.approx((diff, diff - half, diff + half))
    assert df == pytest.approx(3.806, abs=1e-3) and half == pytest.approx(0.0524, abs=1e-3)
    assert math.isnan(welch_interval([0.8], b)[1])


def test_final_and_peak_per_seed_and_the_gap_row():
    curves = {1: [(1, 0.5), (2, 0.7), (3, 0.6)], 2: [(1, 0.6), (2, 0.65)]}
    ref = Candidate("backprop", "backprop", "t1", 0.6, {}, curves=curves)
    dgl = Candidate("dgl", "dgl", "t2", 0.5, {}, curves={1: [(1, 0.4), (2, 0.5)], 2: [(1, 0.55), (2, 0.45)]})
    assert ref.finals() == [0.6, 0.65] and ref.peaks() == [0.7, 0.65]
    assert dgl.finals() == [0.5, 0.45] and dgl.peaks() == [0.5, 0.55]
    rows = accuracy_rows([ref, dgl], "backprop")
    assert rows[0][5:] == ["62.50 ± 3.54", "ref", "67.50 ± 3.54", "ref"]
    gap, low, high = welch_interval([0.5, 0.45], [0.6, 0.65])
    assert rows[1][5] == "47.50 ± 3.54" and rows[1][6] == f"{gap * 100:.2f} [{low * 100:.2f}, {high * 100:.2f}]"
    assert rows[1][6].startswith("-15.00 [")


def test_measuring_the_test_split_every_epoch_leaves_training_as_it_was(monkeypatch):
    """The confirm stage's trials measure the test split after each epoch; the epochs they train must be the search's
    (the same seed gives the same validation accuracy), or confirm and search would disagree by construction."""
    from types import SimpleNamespace

    import tuner.trial.trainable as trial

    arrays = learnable_arrays(300, 50, seed=0)
    config = {"trainer": "dgl", "model": "basiccnn", "width": 0.125, "aux_width": 32, "epochs": 2, "batch_size": 32}
    config.update(val_size=100, device="cpu")
    monkeypatch.setattr(trial, "prepare_environment", lambda: None)
    monkeypatch.setattr(trial, "limit_threads", lambda n: None)
    monkeypatch.setattr(trial, "granted", lambda resource: None)  # no Ray here
    monkeypatch.setattr(trial.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t0"))
    monkeypatch.setattr(trial.tune, "get_checkpoint", lambda: None)
    reports = {True: [], False: []}
    for with_test in (False, True):
        # `out` bound now (B023): each pass reports into its own list
        monkeypatch.setattr(
            trial.tune, "report", lambda metrics, checkpoint=None, out=reports[with_test]: out.append(metrics)
        )
        trial.train_trial(config, arrays, evaluate_test=with_test)
    assert [m["val_acc"] for m in reports[True]] == [m["val_acc"] for m in reports[False]]
    assert [m["train_loss"] for m in reports[True]] == [m["train_loss"] for m in reports[False]]
    assert all("test_acc" in m for m in reports[True]) and not any("test_acc" in m for m in reports[False])


def test_the_confirm_stage_takes_its_retries_from_the_study_settings_as_a_search_does(tmp_path, monkeypatch):
    from dataclasses import replace

    from tuner.config.space_file import load_space
    from tuner.study import confirm, driver
    from tuner.study.opening import StudyRecord

    record = StudyRecord("s", "s", str(tmp_path), f"sqlite:///{tmp_path}/mlflow.db", None, parent_run_id="p")
    settings = replace(driver.study_settings(tmp_path, record, None), max_failures=5)
    monkeypatch.setattr(confirm.tune, "Tuner", lambda trainable, **parts: parts)  # what Ray would be given
    configs = [{"lr": 0.1, "seed": 1}]
    parts = confirm.new_confirm_tuner(load_space("dgl_quick"), tmp_path / "confirm", configs, {}, settings, "run")
    run_config = parts["run_config"]
    assert (run_config.name, run_config.storage_path) == ("confirm", str(tmp_path))
    assert run_config.failure_config.max_failures == 5


def _trial(trial_id, val, k, outcome="completed"):
    params = {"trainer": "dgl", "num_blocks": k, "lr": 0.1, "seed": 0}
    return Trial(trial_id, trial_id, "p", "e", "dgl", "vgg16", outcome, params, {"val_acc": val}, 0, 1)


def test_candidates_are_the_best_trial_and_the_best_at_the_write_up_block_count():
    trials = [_trial("a", 0.7, 4), _trial("b", 0.6, 13), _trial("c", 0.65, None), _trial("d", 0.9, 13, "diverged")]
    picked = pick_candidates({("dgl", 0): trials}, {"dgl": {"num_blocks": 13}}, "vgg16")
    # null num_blocks is one block per conv layer: 13 on vgg16; a diverged trial is never picked
    assert [(c.name, c.trial_id) for c in picked] == [("dgl", "a"), ("dgl @ num_blocks=13", "c")]
    only = pick_candidates({("dgl", 0): trials[1:3]}, {"dgl": {"num_blocks": 13}}, "vgg16")
    assert [c.trial_id for c in only] == ["c"]  # the best is at K=13 already: trained once
    rows = blocks_rows({"dgl": trials}, "vgg16")
    assert rows == [["dgl", "4", "1", "1", "70.00", "a"], ["dgl", "13", "3", "2", "65.00", "c"]]


def test_a_stopped_trial_is_never_a_candidate_over_a_completed_one():
    """ASHA stopped `s` after its first rung with a higher val_acc than `c` reached after every epoch: the scores are
    of different epochs, so `c` is the candidate; and where no trial with the write-up's K ran every epoch, that
    candidate is reported as never completed, not dropped and not confirmed."""
    trials = [_trial("s", 0.9, 4, "stopped"), _trial("c", 0.5, 4), _trial("k", 0.95, 13, "stopped")]
    picked = pick_candidates({("dgl", 0): trials}, {"dgl": {"num_blocks": 13}}, "vgg16", lambda r: (1, 2))
    assert [(c.name, c.trial_id) for c in picked] == [("dgl", "c"), ("dgl @ num_blocks=13", "")]
    assert picked[1].note == "no trial with num_blocks=13 ran every epoch (1 stopped)"
    assert confirm_configs(picked) == [{**trials[1].params, "seed": 1}, {**trials[1].params, "seed": 2}]
    rows = accuracy_rows(picked, "dgl")
    assert rows[1][1] == "never completed" and rows[1][3] == "0/1"


def test_the_search_summary_ranks_completed_trials_first():
    from tuner.ranking import final_score, rank

    rows = [("stopped", 0.9, "a"), ("completed", 0.5, "b"), ("completed", 0.6, "c"), ("diverged", 0.99, "d")]
    ranked = rank(
        rows,
        score=lambda r: final_score(r[1], r[0]),
        trial_id=lambda r: r[2],
        completed=lambda r: r[0] == "completed",
    )
    assert [r[2] for r in ranked] == ["c", "b", "a"]


def test_a_confirm_seed_that_did_not_finish_every_epoch_is_not_counted(monkeypatch):
    """Seed 3 diverged at epoch 2 (its curve keeps epoch 1's finite value): it is listed, not counted as a seed."""
    from types import SimpleNamespace

    from mlflow.store.entities.paged_list import PagedList

    import tuner.study.results as results

    config = {"trainer": "dgl", "epochs": 2, "lr": 0.1}
    candidate = Candidate("dgl", "dgl", "t", 0.5, {**config, "seed": 0}, 0, [1, 2, 3])
    runs, curves, outcomes = [], {}, {1: "completed", 2: "completed", 3: "diverged"}
    for seed, curve in ((1, [(1, 0.4), (2, 0.5)]), (2, [(1, 0.45), (2, 0.55)]), (3, [(1, 0.6)])):
        runs.append(SimpleNamespace(info=SimpleNamespace(run_id=f"r{seed}"), data=SimpleNamespace(tags={})))
        runs[-1].data.tags["dt.outcome"] = outcomes[seed]
        curves[f"r{seed}"] = (curve, {**config, "seed": seed})
    client = SimpleNamespace(
        get_run=lambda run_id: SimpleNamespace(info=SimpleNamespace(experiment_id="0")),
        search_runs=lambda *args, **kwargs: PagedList(runs, None),  # one page
    )
    saved = results.save_candidates([candidate])
    artifacts = {("confirm", results.CANDIDATES): saved}
    artifacts.update({(run_id, "config.json"): json.dumps(c) for run_id, (_, c) in curves.items()})
    monkeypatch.setattr(results, "read_artifact", lambda client, run_id, name: artifacts.get((run_id, name)))
    monkeypatch.setattr(results, "metric_history", lambda client, run_id, key: curves[run_id][0])
    (loaded,) = results.load_confirmed(client, "confirm")
    assert sorted(loaded.curves) == [1, 2] and loaded.unfinished == [3]
    assert loaded.finals() == [0.5, 0.55]
    assert "1 unfinished, not counted" in accuracy_rows([loaded], "dgl")[0][4]


def test_the_gap_interval_is_over_repetition_means_when_there_are_two_or_more():
    def candidate(name, repetition, finals):
        return Candidate(
            name, name, "t", 0.5, {}, repetition, [1, 2], curves={s: [(1, v)] for s, v in enumerate(finals)}
        )

    ref = [
        candidate("backprop", 0, [0.60, 0.62]),
        candidate("backprop", 1, [0.64, 0.66]),
        candidate("backprop", 2, [0.6, 0.6]),
    ]
    dgl = [candidate("dgl", 0, [0.50, 0.52]), candidate("dgl", 1, [0.55, 0.53]), candidate("dgl", 2, [0.5, 0.48])]
    rows = accuracy_rows(ref + dgl, "backprop")
    gap, low, high = welch_interval([0.51, 0.54, 0.49], [0.61, 0.65, 0.6])
    assert rows[1][6] == f"{gap * 100:.2f} [{low * 100:.2f}, {high * 100:.2f}]"
    seeds_only = welch_interval([0.5, 0.52, 0.55, 0.53, 0.5, 0.48], [0.6, 0.62, 0.64, 0.66, 0.6, 0.6])
    assert (high - low) > (seeds_only[2] - seeds_only[1])  # the repetitions' spread widens it


@pytest.mark.slow
def test_tiny_study_end_to_end_into_mlflow_and_the_report(tmp_path):
    write_cifar_folder(tmp_path / "cifar", learnable_arrays(700, 100, seed=3))
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--study", "tiny.yaml", "--data-dir", "cifar", "--storage", "runs", "--mlflow-uri", uri]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tuner.study", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    # the driver's own lines (a Ray worker that Ray ends at shutdown may print one, prefixed with its pid=)
    assert not [
        line for line in (result.stdout + result.stderr).splitlines() if "Traceback" in line and "pid=" not in line
    ]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], max_results=1000)
    by_role = {}
    for run in runs:
        by_role.setdefault(run.data.tags.get("dt.role"), []).append(run)
    (study,) = by_role["study"]
    assert study.info.status == "FINISHED" and study.data.tags["dt.status"] == "finished"
    assert "search" not in by_role  # the arms' searches: one experiment per arm, every repetition in it
    for arm in ("backprop", "dgl"):
        arm_runs = client.search_runs(
            [client.get_experiment_by_name(f"tiny-{arm}").experiment_id], "tags.`dt.role` = 'search'"
        )
        assert sorted(r.info.run_name.split("-")[2] for r in arm_runs) == ["r0", "r1"]
        assert all(r.data.tags["mlflow.parentRunId"] == study.info.run_id for r in arm_runs)
    assert study.data.tags["dt.arm_experiments"] == "tiny-backprop,tiny-dgl"
    (stage,) = by_role["confirm_stage"]
    assert stage.data.tags["mlflow.parentRunId"] == study.info.run_id
    confirm = by_role["confirm"]
    assert all(r.data.tags["mlflow.parentRunId"] == stage.info.run_id for r in confirm)
    seeds = sorted(int(r.data.params["seed"]) for r in confirm)
    # per repetition r: seeds 1, 2 moved on by 1000 r, for 1 or 2 configs (dgl's best may be at the write-up's K)
    assert 8 <= len(confirm) <= 12 and set(seeds) == {1, 2, 1001, 1002}
    for run in confirm:  # the test split measured after every epoch
        assert [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")] == [1, 2]
    assert "study.md" in {a.path for a in client.list_artifacts(study.info.run_id)}

    from tuner.report.__main__ import run_report

    assert run_report(uri, ["tiny"], tmp_path / "report", log_artifacts=False) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Study tiny-" in report and "Welch t over repetition means" in report and "K (num_blocks)" in report
    assert f"python -m bench.search_efficiency --log-to-run {study.info.run_id}" in report
    assert list((tmp_path / "report").glob("confirm_tiny-*.png"))

    # once bench/search_efficiency.py has logged its figure and numbers on the study's run, the report shows them
    figure = tmp_path / "report" / "confirm_tiny.png"
    next((tmp_path / "report").glob("confirm_tiny-*.png")).rename(figure)
    client.log_artifact(study.info.run_id, str(figure.rename(figure.with_name("search_efficiency.png"))))
    reached = "epochs_to_reach_random_best"
    methods = {"asha_tpe": {reached: [12, None, 30]}, "random": {reached: []}}
    client.log_text(study.info.run_id, json.dumps({"methods": methods}), "search_efficiency.json")
    assert run_report(uri, ["tiny"], tmp_path / "again", log_artifacts=False) == 0
    again = (tmp_path / "again" / "report.md").read_text()
    assert "- asha_tpe: 12, never, 30" in again and "![search efficiency](tiny-" in again
    assert list((tmp_path / "again").glob("tiny-*_search_efficiency.png"))
