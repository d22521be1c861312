"""A study killed during an arm's search and again during its confirm stage resumes with nothing lost or duplicated.

The CLI runs in subprocesses on a generated CIFAR folder; the driver is killed at moments chosen from real state
(tuner/trial/trainable.py's DT_FAULT hook stalls a trial at its second epoch, after its first checkpoint, and
leaves a marker file), never from sleeps.
"""

import json
from collections import Counter
from pathlib import Path

import pytest
from fakedata import learnable_arrays, write_cifar_folder
from helpers import Driver, durable_trials, local_store
from mlflow.tracking import MlflowClient
from test_study import TINY_STUDY

from tuner.search.folder import SearchRecord
from tuner.study.opening import StudyRecord
from tuner.tracking.reader import read_artifact

STUDY = TINY_STUDY.replace("  repetitions: 2\n", "")  # one repetition: each arm's search once
assert STUDY != TINY_STUDY
SEEDS = 2  # the tiny study's confirm seeds


def stalled_in(folder: Path, faults: Path):
    """(trial id, worker pid) of a trial stalled by the fault hook that the Ray state of `folder` holds as running:
    a resumed driver finds it there and continues it from its checkpoint."""
    for found in faults.glob("*-stall-*"):
        trial_id = found.name.split("-stall-")[0]
        if durable_trials(folder).get(trial_id) == "RUNNING" and list((folder / trial_id).glob("checkpoint_*")):
            return trial_id, int(found.read_text())
    return None


def steps(client, run_id: str, metric: str) -> list:
    return [m.step for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)]


@pytest.mark.slow
def test_a_study_killed_in_a_search_and_in_confirm_resumes_with_nothing_lost_or_duplicated(tmp_path):
    write_cifar_folder(tmp_path / "cifar", learnable_arrays(700, 100, seed=3))
    (tmp_path / "tiny.yaml").write_text(STUDY)
    args = ["--study", "tiny.yaml", "--data-dir", str(tmp_path / "cifar"), *local_store(tmp_path)]
    faults = tmp_path / "faults"

    # 1. SIGKILL the driver while the dgl arm's trial stalls at epoch 2 (the backprop arm has finished)
    first = Driver(args, tmp_path, "first", "stall:trainer=dgl:epoch=2", module="tuner.study")
    folder = first.wait_for(lambda: next((tmp_path / "runs").glob("tiny-*/study.json"), None), "the study").parent
    arm = first.wait_for(lambda: StudyRecord.load(folder).arms.get("dgl r0"), "the dgl arm's search")
    _, worker = first.wait_for(lambda: stalled_in(Path(arm), faults), "the dgl trial's stall")
    assert SearchRecord.load(Path(StudyRecord.load(folder).arms["backprop r0"])).status == "finished"
    first.kill(worker)

    # 2. resume; SIGKILL again while a confirm trial (seed 1) stalls at epoch 2
    second = Driver(args + ["--resume"], tmp_path, "second", "stall:seed=1:epoch=2", module="tuner.study")
    _, worker = second.wait_for(lambda: stalled_in(folder / "confirm", faults), "a confirm trial's stall")
    assert all(SearchRecord.load(Path(f)).status == "finished" for f in StudyRecord.load(folder).arms.values())
    second.kill(worker)

    # 3. resume to the end
    third = Driver(args + ["--resume", str(folder)], tmp_path, "third", module="tuner.study")
    assert third.wait() == 0, third.output[-3000:]
    driver_lines = [line for d in (first, second, third) for line in d.output.splitlines() if "pid=" not in line]
    assert not [line for line in driver_lines if "Traceback" in line]  # (a Ray worker may print one as it is ended)
    nothing_lost_or_duplicated(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"), folder)


def nothing_lost_or_duplicated(client, folder: Path) -> None:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=10_000)
    role = Counter(run.data.tags.get("dt.role") for run in runs)
    children = {}
    for run in runs:
        children.setdefault(run.data.tags.get("mlflow.parentRunId"), []).append(run)
    assert role["study"] == 1 and StudyRecord.load(folder).status == "finished" and (folder / "study.md").exists()
    (study,) = [run for run in runs if run.data.tags.get("dt.role") == "study"]
    assert (study.info.status, study.data.tags["dt.status"]) == ("FINISHED", "finished")

    # each arm's search: each trial exactly once, one MLflow run per trial, every epoch logged once
    searches = [run for run in runs if run.data.tags.get("dt.role") == "search"]
    assert sorted(run.data.tags["dt.trainer"] for run in searches) == ["backprop", "dgl"]
    for search in searches:
        trials = children[search.info.run_id]
        on_disk = [p.name for p in Path(search.data.tags["dt.storage"]).iterdir() if (p / "params.json").exists()]
        assert sorted(t.data.tags["dt.trial_id"] for t in trials) == sorted(on_disk) and len(on_disk) == 1
        assert all(steps(client, t.info.run_id, "val_acc") == [1, 2] for t in trials)
        assert search.data.tags["dt.status"] == "finished"

    # the confirm stage: each (config, seed) exactly one run, each with the test split at both epochs
    (stage,) = [run for run in runs if run.data.tags.get("dt.role") == "confirm_stage"]
    confirm = children[stage.info.run_id]
    candidates = json.loads(read_artifact(client, stage.info.run_id, "candidates.json"))
    configs = Counter(json.dumps(json.loads(read_artifact(client, r.info.run_id, "config.json"))) for r in confirm)
    assert len(configs) == len(confirm) == SEEDS * len(candidates) and set(configs.values()) == {1}
    assert all(steps(client, r.info.run_id, "test_acc") == [1, 2] for r in confirm)
    assert all(r.info.status == "FINISHED" for r in confirm) and role["confirm"] == len(confirm)
