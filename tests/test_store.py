"""tuner/tracking/store.py: MLflow answers a query one page at a time, and every query of the project reads them all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient

from tuner.tracking import store

ROOT = Path(__file__).resolve().parents[1]


def test_queries_read_every_page(tmp_path):
    """Five trials under a parent, read two to a page: all five come back, and nothing that is not a child."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("paged")
    parent = client.create_run(experiment_id, tags={store.ROLE: store.Role.SEARCH}).info.run_id
    trials = {
        client.create_run(
            experiment_id, tags={store.PARENT: parent, store.ROLE: store.Role.TRIAL, store.TRIAL_ID: f"t{i}"}
        ).info.run_id
        for i in range(5)
    }
    client.create_run(experiment_id, tags={store.ROLE: store.Role.TRIAL})  # a trial of no search here
    for name in ("other-1", "other-2"):
        client.create_experiment(name)

    assert {run.info.run_id for run in store.child_runs(client, parent, page_size=2)} == trials
    assert len(store.child_runs(client, parent, store.tag_filter(store.TRIAL_ID, "t3"), page_size=2)) == 1
    assert len(store.all_runs(client, [experiment_id], store.TRIAL_FILTER, page_size=2)) == 6
    # "Default", "paged" and the two others
    assert len(store.all_experiments(client, page_size=2)) == 4


def test_every_mlflow_search_goes_through_the_paging_queries():
    """`search_runs` / `search_experiments` return one page (1000 runs by default); only store.py calls them."""
    calls = re.compile(r"\.search_(runs|experiments)\b")
    callers = [
        str(path.relative_to(ROOT))
        for folder in ("tuner", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if calls.search(path.read_text()) and path != ROOT / "tuner" / "tracking" / "store.py"
    ]
    assert callers == []
