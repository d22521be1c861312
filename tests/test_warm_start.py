"""--warm-start: an earlier search's Optuna trials seed a new search whose space is compatible."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from tuner import optuna_storage
from tuner.ray_adaptations.honest_optuna import HonestOptunaSearch
from tuner.run import main
from tuner.search_folder import SearchRecord
from tuner.settings import SearchSettings
from tuner.space import make_sampler
from tuner.space_file import load_space
from tuner.warm_start import WarmStartError, load_warm_start, new_search_study


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
    return dataclasses.replace(space, params={**space.params, "lr": dataclasses.replace(space.params["lr"], high=high)})


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
    storage, points = new_search_study(new, "new-1", space, str(source), top=1)
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


def test_bad_warm_start_is_one_line(tmp_path, capsys):
    with pytest.raises(WarmStartError, match="not a search folder"):
        load_warm_start(str(tmp_path), load_space("dgl_quick"))
    code = main(["--space", "dgl_quick", "--warm-start-top", "2", "--dry-run", "--storage", str(tmp_path)])
    assert code == 2 and "--warm-start-top 2: a count of 0 or more, with --warm-start" in capsys.readouterr().err
