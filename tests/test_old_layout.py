"""A search saved before tuner/ had packages resumes (tuner/search/old_layout.py).

tests/fixtures/old_layout_search/ is such a search, killed with its first trial in flight (its epoch-1 checkpoint
saved) and its second not started; tests/fixtures/make_old_layout_search.py made it with the old code. Its
tuner.pkl and searcher state pickle this project's classes under their old module paths (tuner.schema,
tuner.space, tuner.tracking.MLflowTracker, tuner.progress), which Ray unpickles on --resume.

The saved files name the folder the search ran in (its ROOT file): search.json's storage, data and MLflow paths,
MLflow's artifact locations, Ray's trial state and the searcher's Optuna storage URL inside pickles. Pickles store
a string's length before it, so the test puts its copy at a path of exactly ROOT's length and replaces ROOT byte
for byte in every file.
"""

import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from fakedata import learnable_arrays, write_cifar_folder
from mlflow.tracking import MlflowClient

from tuner.config.dimension import Dimension
from tuner.config.space_file import load_space
from tuner.search.folder import SearchRecord

FIXTURE = Path(__file__).parent / "fixtures" / "old_layout_search"


def same_length_copy(tmp_path: Path) -> Path:
    old_root = (FIXTURE / "ROOT").read_text()
    padding = len(old_root) - len(str(tmp_path / "s"))
    assert padding >= 0, f"tmp_path is too long for the fixture's paths: {tmp_path}"
    root = tmp_path / ("s" * (1 + padding))
    for source in FIXTURE.rglob("*"):
        if source.is_file() and source.name != "ROOT":
            target = root / source.relative_to(FIXTURE)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes().replace(old_root.encode(), str(root).encode()))
    return root


@pytest.mark.slow
def test_a_search_saved_before_the_packages_resumes_to_the_end(tmp_path):
    root = same_length_copy(tmp_path)
    write_cifar_folder(root / "cifar", learnable_arrays(300, 100, seed=3))
    (folder,) = (root / "runs").iterdir()
    result = subprocess.run(
        [sys.executable, "-m", "tuner.run", "--space", "tiny.yaml", "--resume", str(folder)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from its epoch-1 checkpoint" in result.stdout  # the first trial went on, not over

    record = SearchRecord.load(folder)
    assert record.status == "finished"
    client = MlflowClient(record.mlflow_uri)
    experiment = client.get_experiment_by_name("tiny")
    trials = client.search_runs([experiment.experiment_id], "tags.`dt.role` = 'trial'")
    assert len(trials) == 2 and all(run.info.status == "FINISHED" for run in trials)
    # the second trial's lr was sampled by the searcher restored from its pickle (the first's is the point, 0.05)
    assert len({run.data.params["lr"] for run in trials}) == 2
    assert client.get_run(record.parent_run_id).data.tags["dt.status"] == "finished"


class OldDimension:
    """Pickles as a Dimension did before it had branches: its distribution in its own fields."""

    def __init__(self, name, type, low=None, high=None, values=None, step=None, log=False, when=None, **rest):
        self.state = dict(name=name, type=type, low=low, high=high, values=values, step=step, log=log)
        self.state.update(when=when or {}, branches=rest.get("branches", ()), condition=rest.get("condition", ""))

    def __reduce__(self):
        return object.__new__, (Dimension,), self.state


def test_a_dimension_pickled_before_branches_samples_contains_and_describes_as_before():
    space = load_space("dni_basiccnn")
    adamw, sgd = ({"optimizer": (choice,)} for choice in ("adamw", "sgd"))
    old = {
        "momentum": OldDimension("momentum", "uniform", 0.8, 0.99, when=sgd),
        "lr": OldDimension(
            "lr", "loguniform", 1e-4, 0.1, log=True, when={"optimizer": ("adamw", "sgd")},
            branches=(
                OldDimension("lr", "loguniform", 1e-4, 3e-3, log=True, when=adamw, condition="[optimizer=adamw]"),
                OldDimension("lr", "loguniform", 0.003, 0.1, log=True, when=sgd, condition="[optimizer=sgd]"),
            ),
        ),
    }  # fmt: skip
    restored = {key: pickle.loads(pickle.dumps(dimension)) for key, dimension in old.items()}
    assert restored == {key: space.params[key] for key in old}
    assert restored["lr"].describe() == (
        'loguniform [0.0001, 0.003]  (only when optimizer in ["adamw"]) | '
        'loguniform [0.003, 0.1]  (only when optimizer in ["sgd"])'
    )
    assert restored["momentum"].contains(0.9) and not restored["lr"].contains(0.2)

    def trials(params: dict) -> list:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(6):
            trial = study.ask()
            replace(space, params=params).define_by_run(trial)
            study.tell(trial, 0.0)
        return [t.params for t in study.trials]

    sampled = trials({**space.params, **restored})
    assert sampled == trials(space.params)
    assert {"lr[optimizer=adamw]", "lr[optimizer=sgd]", "momentum"} <= {name for t in sampled for name in t}
