"""--warm-start: an earlier search's Optuna trials seed a new search whose space is compatible."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from tuner.config.settings import SearchSettings
from tuner.config.space import make_sampler
from tuner.config.space_file import load_space
from tuner.ray_adaptations.honest_optuna import HonestOptunaSearch
from tuner.run import main
from tuner.search import optuna_storage
from tuner.search.folder import SearchRecord
from tuner.search.warm_start import WarmStartError, load_warm_start, new_search_study


def earlier_search(folder, space, lrs):
    """A finished search's folder: search.json and an optuna.db whose trials have the given lr values."""
    record = SearchRecord(
        name="old-1",
        space=space.name,
        space_path="",
        experiment="x",
        status="finished",
        settings=SearchSettings(space=space.name, storage=str(folder.parent), mlflow_uri=""),
    )
    folder.mkdir()
    record.save(folder)
    study = optuna.create_study(
        study_name=record.name,
        storage=optuna_storage.storage_url(folder),
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for i, lr in enumerate(lrs):
        study.enqueue_trial({"lr": lr, "local_loss": "pred"})
        trial = study.ask()
        space.define_by_run(trial)
        trial.report(0.1 * i, 1)
        if i % 2:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, 0.2 + 0.1 * i)
    return folder


def narrowed(space, high):
    (lr,) = space.params["lr"].branches
    lr = dataclasses.replace(space.params["lr"], branches=(dataclasses.replace(lr, high=high),))
    return dataclasses.replace(space, params={**space.params, "lr": lr})


def test_fitting_trials_seed_the_new_study(tmp_path):
    broad = load_space("dgl_quick")
    source = earlier_search(tmp_path / "old", broad, [0.01, 0.02, 0.03, 0.15])
    space = narrowed(broad, 0.1)
    warm = load_warm_start(str(source), space, top=1)
    assert len(warm.trials) == 3 and len(warm.dropped) == 1 and "lr=0.15 outside the new range" in warm.dropped[0]
    assert warm.top == [dict(warm.trials[2].params)]  # trial 2 (lr 0.03) scored best, 0.4
    assert warm.summary().endswith(
        "3 trials of old-1 (2 complete, 1 pruned); 1 left out (e.g. trial 3: lr=0.15 "
        "outside the new range); its best config runs first"
    )

    new = tmp_path / "new"
    new.mkdir()
    settings = SearchSettings(space="x", storage=str(tmp_path), mlflow_uri="", warm_start=str(source), warm_start_top=1)
    storage, points = new_search_study(new, "new-1", space, settings)
    assert points[0] == warm.top[0] and points[1:] == space.searcher.points_to_evaluate
    searcher = HonestOptunaSearch(
        space=space.define_by_run,
        metric="val_acc",
        mode="max",
        storage=storage,
        study_name="new-1",
        sampler=make_sampler(space),
        points_to_evaluate=points,
    )
    searcher.suggest("a")
    trials = optuna.load_study(study_name="new-1", storage=optuna_storage.storage_url(new)).trials
    assert [t.state.name for t in trials[:3]] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert trials[1].intermediate_values == {1: 0.1}
    assert trials[3].params["lr"] == warm.top[0]["lr"]  # the enqueued best config runs first


def test_a_new_search_reads_its_warm_start_once(tmp_path, monkeypatch):
    from tuner.search import driver, warm_start

    source = earlier_search(tmp_path / "old", load_space("dgl_quick"), [0.01, 0.02])
    reads = []
    read = warm_start._from_folder
    monkeypatch.setattr(warm_start, "_from_folder", lambda folder: reads.append(folder) or read(folder))
    built = []

    def search_up_to_its_tuner(space, folder, record, resume, settings, *given):  # run_search without Ray
        folder.mkdir(parents=True)
        built.append(driver.new_tuner(space, folder, record, {}, settings, *given))

    monkeypatch.setattr(driver, "run_search", search_up_to_its_tuner)
    flags = ["--space", "dgl_quick", "--storage", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"]
    main([*flags, "--warm-start", str(source)])
    assert built and reads == [str(source)]
    (folder,) = (tmp_path / "runs").iterdir()
    trials = optuna.load_study(study_name=folder.name, storage=optuna_storage.storage_url(folder)).trials
    assert [t.user_attrs.get("warm_start_from") for t in trials].count("old-1") == 2  # seeded from that one read


def test_bad_warm_start_is_one_line(tmp_path, capsys):
    with pytest.raises(WarmStartError, match="not a search folder"):
        load_warm_start(str(tmp_path), load_space("dgl_quick"))
    code = main(["--space", "dgl_quick", "--warm-start-top", "2", "--dry-run", "--storage", str(tmp_path)])
    assert code == 2 and "--warm-start-top 2: a count of 0 or more, with --warm-start" in capsys.readouterr().err


def earlier_mlflow_search(uri, space, trials):
    """A search's MLflow parent run as the tracker writes it: space.yaml, and per trial a child run with its
    config.json, its val_acc per epoch and its dt.outcome. trials: (lr, outcome, [val_acc per epoch])."""
    from mlflow.tracking import MlflowClient

    from tuner.config.schema import resolve
    from tuner.tracking.parent_run import start_parent_run

    client = MlflowClient(uri)
    parent = start_parent_run(client, "old", "old-search-1", {}, {}, space.text)
    experiment_id = client.get_run(parent).info.experiment_id
    for number, (lr, outcome, values) in enumerate(trials, 1):
        searched = {"lr": lr, "weight_decay": 1e-4, "aux_head": "nokland", "num_blocks": 4, "local_loss": "pred"}
        config = {**space.base_config().model_dump(), **searched, "dropout": 0.1}
        tags = {"mlflow.parentRunId": parent, "dt.role": "trial", "dt.outcome": outcome}
        run_id = client.create_run(experiment_id, run_name=f"#{number} dgl lr={lr}", tags=tags).info.run_id
        client.log_dict(run_id, resolve(config).model_dump(), "config.json")
        for epoch, value in enumerate(values, 1):
            client.log_metric(run_id, "val_acc", value, step=epoch)
    return parent


def test_an_mlflow_run_seeds_the_new_study_as_a_folder_does(tmp_path, capsys):
    broad = load_space("dgl_quick")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = [
        (0.02, "completed", [0.3, 0.5]),
        (0.15, "completed", [0.6, 0.7]),
        (0.03, "stopped", [0.2]),
        (0.04, "failed", [0.1]),
    ]
    parent = earlier_mlflow_search(uri, broad, runs)
    warm = load_warm_start(f"runs:/{parent}", narrowed(broad, 0.1), top=1, tracking_uri=uri)
    assert warm.source == "old-search-1" and warm.dropped == ["#2: lr=0.15 outside the new range"]
    complete, pruned = warm.trials  # the failed trial is left out, as a FAIL trial is from a study
    assert (complete.state.name, complete.value, complete.intermediate_values) == ("COMPLETE", 0.5, {1: 0.3, 2: 0.5})
    assert (pruned.state.name, pruned.value, pruned.intermediate_values) == ("PRUNED", None, {1: 0.2})
    assert complete.params["lr"] == 0.02 and "aux_width" not in complete.params  # nokland has no width to search
    assert warm.top == [complete.params]

    # the CLI: the plan says what the warm start brings; a run that is no search, and --resume with it, are one line
    args = ["--space", "dgl_quick", "--dry-run", "--storage", str(tmp_path / "runs"), "--mlflow-uri", uri]
    assert main([*args, "--warm-start", parent]) == 0
    assert "warm start: 3 trials of old-search-1 (2 complete, 1 pruned)" in capsys.readouterr().out
    child = earlier_mlflow_search(uri, broad, [])  # a parent run of no trials; its own id is a search, not a trial's
    assert main([*args, "--warm-start", f"runs:/{child}"]) == 0 and "0 trials of" in capsys.readouterr().out
    for bad, expected in (
        (["--warm-start", "runs:/" + "0" * 32], "not readable in"),
        (["--warm-start", parent, "--resume"], "--warm-start: not with --resume"),
    ):
        assert main([*args, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "runs").exists()


def test_a_distribution_per_condition_seeds_the_new_study_under_its_conditions_name(tmp_path):
    space = load_space("dni_basiccnn")  # lr and weight_decay: a range per optimizer
    warm = load_warm_start(str(earlier_search(tmp_path / "old", space, [1e-3] * 4)), space, top=1)
    assert len(warm.trials) == 4 and not warm.dropped, warm.dropped
    for trial in warm.trials:
        assert f"lr[optimizer={trial.params['optimizer']}]" in trial.params
    assert "lr" in warm.top[0] and space.params["lr"].branch(warm.top[0]).contains(warm.top[0]["lr"])
