"""Interrupted searches resume with nothing lost or duplicated; trials survive faults.

The slow tests run the CLI in subprocesses on a generated CIFAR folder and interrupt it at moments chosen from
real state, never from sleeps: the trial's test hook (DT_FAULT, tuner/trial/trainable.py) stalls a chosen trial at a
chosen epoch and leaves a marker file holding its worker's pid; what the search has made durable is read from
the resume snapshot (resume_state/ray_state.pkl) and from MLflow.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakedata import learnable_arrays, write_cifar_folder
from helpers import Driver, durable_trials, local_store, marker
from mlflow.tracking import MlflowClient

from tuner.config.settings import SearchSettings
from tuner.ray_adaptations.asha import STATE_FILE, PersistentASHA
from tuner.ray_adaptations.snapshots import RESUME_DIR, install_ray_snapshot, save_ray_snapshot
from tuner.search.folder import SearchRecord, claim
from tuner.tracking.parent_run import start_parent_run
from tuner.tracking.trial_runs import MLflowTracker

ENDED = ("completed", "stopped", "diverged", "failed")

SPACE = """
trainer: backprop
model: basiccnn
fixed: {{width: 0.0625, epochs: {epochs}, batch_size: 50, train_subset: 400, val_size: 200, eval_batch_size: 200}}
search:
  lr: {{type: loguniform, low: 1.0e-4, high: 0.3}}
scheduler: {scheduler}
searcher: {{type: optuna_tpe, seed: 0, n_startup_trials: 3, points_to_evaluate: {points}}}
num_samples: {num_samples}
max_concurrent: 2
resources: {{cpu: 1, gpu: 0}}
metric: val_acc
mode: max
"""


def write_space(
    tmp_path,
    epochs=4,
    num_samples=5,
    points="[{lr: 0.05}]",
    scheduler="{type: asha, max_t: 4, grace_period: 1, reduction_factor: 2}",
) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SPACE.format(epochs=epochs, num_samples=num_samples, points=points, scheduler=scheduler))
    return path


def cli_args(space, tmp_path, data=None):
    return ["--space", str(space), *local_store(tmp_path)] + (["--data-dir", str(data)] if data else [])


def run_cli(*args, cwd, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "tuner.run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def child_runs(client, experiment: str) -> dict:
    """trial id -> its child run (asserting there is exactly one per trial)."""
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("dt.role") == "trial"] if exp else []
    by_trial = {r.data.tags["dt.trial_id"]: r for r in runs}
    assert len(by_trial) == len(runs), "two MLflow runs for one trial"
    return by_trial


def history(client, run) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_acc"))


def resumed_from(output: str) -> dict:
    """trial id -> the checkpoint epochs it was resumed from, as the trainable printed them."""
    found: dict = {}
    for trial_id, epoch in re.findall(r"trial (\w+): resumed from its epoch-(\d+) checkpoint", output):
        found.setdefault(trial_id, []).append(int(epoch))
    return found


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, learnable_arrays(1000, 200, seed=3))
    return root


# ------------------------------------------------------------------------------------------------ the pieces


def test_ray_state_is_copied_whole_and_put_back(tmp_path):
    staging, folder = tmp_path / "staging", tmp_path / "search"
    staging.mkdir(), folder.mkdir()
    old, new = "2026-11-28_01-00-00", "2026-11-28_02-00-00"
    for session, text in ((old, "older session"), (new, "current")):
        for name in ("experiment_state-{}.json", "search_gen_state-{}.json", "searcher-state-{}.pkl"):
            (staging / name.format(session)).write_text(f"{text} {name}")
    (staging / f".1a2b-tmp-searcher-state-{new}.pkl").write_text("half written")
    assert not install_ray_snapshot(folder)  # nothing saved yet
    save_ray_snapshot(staging, folder)

    # the experiment folder as a killed driver leaves it: stale copies, and a newer session's torn state
    (folder / f"experiment_state-{new}.json").write_text("stale")
    (folder / "experiment_state-2026-11-28_03-00-00.json").write_text('{"trial_da')
    (folder / "search.json").write_text("ours")
    assert install_ray_snapshot(folder)
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == sorted(
        [f"experiment_state-{new}.json", f"search_gen_state-{new}.json", f"searcher-state-{new}.pkl", "search.json"]
    )
    assert (folder / f"experiment_state-{new}.json").read_text() == "current experiment_state-{}.json"
    assert (folder / "search.json").read_text() == "ours"


def test_search_json_holds_the_settings_as_they_are(tmp_path, monkeypatch):
    from tuner.run import parse_args, settings_from_flags
    from tuner.search.opening import locate_resume

    monkeypatch.chdir(tmp_path)
    flags = ["--space", "dgl_quick", "--num-samples", "3", "--data-dir", "data", "--max-failures", "5"]
    settings = settings_from_flags(parse_args([*flags, "--optuna-storage", "postgresql://u@db:5432/optuna"]))
    assert settings.data_dir == str(tmp_path / "data") and settings.storage == str(tmp_path / "runs")
    assert settings.mlflow_uri == f"sqlite:///{tmp_path}/mlflow.db"  # absolute: resumable from anywhere
    folder = tmp_path / "runs" / "dgl_quick-20260101-000000"
    SearchRecord(name=folder.name, space="dgl_quick", space_path="", settings=settings, experiment="dgl_quick").save(
        folder
    )
    assert json.loads((folder / "search.json").read_text())["settings"]["num_samples"] == 3
    found, record = locate_resume("latest", tmp_path / "runs", "dgl_quick")
    assert found == folder and record.settings == settings and record.mlflow_uri == settings.mlflow_uri
    assert record.settings.optuna_storage == "postgresql://u@db:5432/optuna"  # where a resumed search finds its study


class FakeTrial:
    def __init__(self, trial_id, status, last_result=None):
        self.trial_id, self.status, self.config = trial_id, status, {"lr": 0.1}
        self.last_result = last_result or {}


def test_tracker_makes_mlflow_agree_with_the_restored_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    parent = start_parent_run(client, "restore", "restore-1", {}, {}, "")
    trials = {name: FakeTrial(name, "RUNNING") for name in ("done", "crashed", "inflight", "orphan")}
    before = MLflowTracker(uri, parent)  # the killed driver's tracker
    for trial in trials.values():
        before.on_trial_start(0, [], trial)
        before.on_trial_result(0, [], trial, {"epoch": 1, "val_acc": 0.5})
    client.set_terminated(before._run_id(trials["crashed"]), status="KILLED")  # as an interrupted search leaves it

    # what Ray restored: 'done' finished and 'crashed' failed before the state was saved; 'orphan' started after
    trials["done"].status, trials["done"].last_result = "TERMINATED", {"epoch": 1, "finished": True}
    trials["crashed"].status = "ERROR"
    restored = [trials["done"], trials["crashed"], trials["inflight"]]
    after = MLflowTracker(uri, parent)
    after.on_step_begin(0, [])  # a new search: nothing to agree with yet, nothing touched
    assert len(client.search_runs([client.get_run(parent).info.experiment_id], "tags.`dt.role` = 'trial'")) == 4
    after = MLflowTracker(uri, parent)
    after.on_step_begin(0, restored)
    runs = {
        r.data.tags["dt.trial_id"]: r
        for r in client.search_runs([client.get_run(parent).info.experiment_id], "tags.`dt.role` = 'trial'")
    }
    assert sorted(runs) == ["crashed", "done", "inflight"]  # the orphan's run is deleted
    assert (runs["done"].info.status, runs["done"].data.tags["dt.outcome"]) == ("FINISHED", "completed")
    assert (runs["crashed"].info.status, runs["crashed"].data.tags["dt.outcome"]) == ("FAILED", "failed")
    assert (runs["inflight"].info.status, runs["inflight"].data.tags["dt.outcome"]) == ("RUNNING", "running")
    after.on_trial_result(0, [], trials["inflight"], {"epoch": 1, "val_acc": 0.9})  # redone: no second point
    after.on_trial_result(0, [], trials["inflight"], {"epoch": 2, "val_acc": 0.6})
    assert history(client, runs["inflight"]) == [(1, 0.5), (2, 0.6)]


# ------------------------------------------------------------------------------------------- before Ray starts


def test_an_unfinished_search_is_not_started_over(tmp_path):
    space = write_space(tmp_path)
    folder = tmp_path / "runs" / "tiny-20260101-000000"
    settings = SearchSettings(space=str(space), storage=str(folder.parent), mlflow_uri="sqlite:///x.db")
    SearchRecord(name=folder.name, space="tiny", space_path=str(space), settings=settings, experiment="tiny").save(
        folder
    )  # status running: its driver was killed
    result = run_cli(*cli_args(space, tmp_path), cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"--resume {folder}" in lines[0] and "--fresh" in lines[0]

    lock = claim(folder)  # as a live driver holds it
    try:
        result = run_cli(*cli_args(space, tmp_path), "--resume", cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and f"running now (driver pid {os.getpid()})" in lines[0]
    finally:
        lock.close()
    assert sorted(p.name for p in folder.iterdir()) == [".driver.lock", "search.json"]


@pytest.mark.parametrize("bad", ["storage", "mlflow"])
def test_unusable_storage_or_tracking_fails_at_start(tmp_path, bad):
    space = write_space(tmp_path)
    args = cli_args(space, tmp_path)
    if bad == "storage":
        (tmp_path / "a-file").write_text("")
        args[args.index("--storage") + 1] = str(tmp_path / "a-file" / "runs")
    else:
        args[args.index("--mlflow-uri") + 1] = "http://127.0.0.1:9"  # nothing listens on the discard port
    started = time.time()
    result = run_cli(*args, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --{'storage' if bad == 'storage' else 'mlflow-uri'} ")
    assert time.time() - started < 60
    assert not list(tmp_path.glob("runs/*/search.json"))  # no search was started


# ---------------------------------------------------------------------------------------------- interruptions


@pytest.mark.slow
def test_killed_then_interrupted_search_resumes_with_nothing_lost_or_duplicated(tmp_path, fake_data):
    # the good rate first and a hopeless one beside it, so ASHA lets the first reach epoch 3, where it stalls (twice)
    space = write_space(tmp_path, points="[{lr: 0.05}, {lr: 0.0001}, {lr: 0.03}, {lr: 0.02}]")
    stall = "stall:lr=0.05:epoch=3:times=2"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")

    # 1. SIGKILL the driver once a trial has ended (durably) while the stalled one is in flight with 2 checkpoints
    first = Driver(cli_args(space, tmp_path, fake_data), tmp_path, "first", stall)
    stalled_pid = int(first.wait_for(lambda: marker(tmp_path, "stall", 1), "the first stall").read_text())
    folder = next((tmp_path / "runs").iterdir())
    ended_at_kill = first.wait_for(
        lambda: [t for t, status in durable_trials(folder).items() if status == "TERMINATED"], "a trial to end"
    )
    first.kill(stalled_pid)
    assert SearchRecord.load(folder).status == "running"  # nobody could say otherwise
    before_kill = {t: history(client, run) for t, run in child_runs(client, "tiny").items()}

    # 2. resume; Ctrl-C (SIGINT to the process group, as a terminal sends it) once the stalled trial is back in flight
    second = Driver(cli_args(space, tmp_path) + ["--resume"], tmp_path, "second", stall)
    second.wait_for(lambda: marker(tmp_path, "stall", 2), "the second stall")
    back_after = marker(tmp_path, "stall", 2).stat().st_mtime - second.started
    ended_at_sigint = [t for t, run in child_runs(client, "tiny").items() if run.data.tags["dt.outcome"] in ENDED]
    os.killpg(second.proc.pid, signal.SIGINT)
    interrupted_at = time.time()
    assert second.wait(timeout=120) == 130
    stop_s = time.time() - interrupted_at
    # a trial in mid-epoch is not waited for (Ray alone would wait 10 s for it: tuner/ray_adaptations/interrupts.py)
    assert stop_s < 10, f"Ctrl-C took {stop_s:.1f} s to end the search"
    output = second.output
    assert "Traceback" not in output and "Tuner.restore" not in output
    assert f"python -m tuner.run --space {space} --resume {folder}" in output
    runs = child_runs(client, "tiny")
    assert not [t for t, run in runs.items() if run.info.status == "RUNNING"]
    assert all(run.data.tags["dt.outcome"] == "running" for run in runs.values() if run.info.status == "KILLED")
    parent = client.get_run(SearchRecord.load(folder).parent_run_id)
    assert (parent.info.status, parent.data.tags["dt.status"]) == ("KILLED", "interrupted")
    assert SearchRecord.load(folder).status == "interrupted"
    before_sigint = {t: history(client, run) for t, run in runs.items()}

    # 3. resume again, by path, to the end
    third = Driver(cli_args(space, tmp_path) + ["--resume", str(folder)], tmp_path, "third", stall)
    assert third.wait() == 0, third.output[-3000:]
    outputs = {"second": second.output, "third": third.output}
    print(
        f"resume: driver start -> the stalled trial training again: {back_after:.0f} s; Ctrl-C -> exit {stop_s:.1f} s"
    )

    # one run per trial, as many trials as an uninterrupted search, nothing left open
    runs = child_runs(client, "tiny")
    assert len(runs) == 5 and sorted(runs) == sorted(p.name for p in folder.iterdir() if (p / "params.json").exists())
    assert all(
        run.info.status in ("FINISHED", "FAILED") and run.data.tags["dt.outcome"] in ENDED for run in runs.values()
    )
    parent = client.get_run(SearchRecord.load(folder).parent_run_id)
    assert (parent.info.status, parent.data.tags["dt.status"]) == ("FINISHED", "finished")
    assert parent.data.metrics["num_trials"] == 5 and SearchRecord.load(folder).status == "finished"
    histories = {t: history(client, run) for t, run in runs.items()}
    for trial_id, points in histories.items():
        steps = [step for step, _ in points]
        assert steps == list(range(1, len(steps) + 1)), (trial_id, points)  # one point per epoch
        assert (len(steps) == 4) == (runs[trial_id].data.tags["dt.outcome"] == "completed")

    # no ended trial ran again; the ones in flight went on from their last checkpoint, at most one epoch redone
    resumed = {run: resumed_from(text) for run, text in outputs.items()}
    for trial_id in ended_at_kill:
        assert trial_id not in resumed["second"] and trial_id not in resumed["third"]
        assert histories[trial_id] == before_kill[trial_id]
    for trial_id in ended_at_sigint:
        assert trial_id not in resumed["third"] and histories[trial_id] == before_sigint[trial_id]
    for run, before in (("second", before_kill), ("third", before_sigint)):
        for trial_id, epochs in resumed[run].items():
            assert len(epochs) == 1 and epochs[0] >= len(before.get(trial_id, [])) - 1, (run, trial_id, epochs)
            assert histories[trial_id][: len(before[trial_id])] == before[trial_id]  # kept, not rewritten
    (stalled,) = [t for t, run in runs.items() if run.data.params["lr"] == "0.05"]
    # from its epoch-1 checkpoint; or, when the kill came before the driver's snapshot held that checkpoint, from
    # the start: epoch 1 redone, still at most one epoch (the guarantee checked above)
    assert resumed["second"][stalled] in ([1], [2]) and resumed["third"][stalled] == [2]

    # Optuna: told about every trial once, no config suggested twice; its values are MLflow's
    import optuna

    from tuner.ray_adaptations.honest_optuna import HonestOptunaSearch

    searcher = HonestOptunaSearch()
    searcher.restore_from_dir(str(folder))
    study = searcher.study.trials
    ours = {t.number for t in searcher._ot_trials.values()}
    assert sorted(searcher._ot_trials) == sorted(runs) and len(ours) == 5
    # a trial Optuna's storage gave out after Ray's last snapshot, just before the kill, never ran: told FAIL
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study if t.number not in ours)
    assert len({study[n].params["lr"] for n in ours}) == 5 and all(t.state.is_finished() for t in study)
    for trial_id, ot_trial in searcher._ot_trials.items():
        told = study[ot_trial.number]
        assert float(runs[trial_id].data.params["lr"]) == told.params["lr"]
        assert sorted(told.intermediate_values.items()) == histories[trial_id]

    # ASHA: every rung value is the trial's logged value at that epoch (nothing forgotten across the two restores),
    # and the trials it stopped are the ones MLflow calls stopped
    asha = PersistentASHA(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2, metric="val_acc", mode="max")
    asha.restore(str(folder / RESUME_DIR / STATE_FILE))
    for milestone, recorded in asha.rungs():
        reached = {t: dict(points)[milestone] for t, points in histories.items() if len(points) >= milestone}
        assert recorded == pytest.approx(reached), milestone
    stopped = {t for t, run in runs.items() if run.data.tags["dt.outcome"] == "stopped"}
    assert stopped <= asha.stopped and asha.stopped - stopped <= {
        t for t, points in histories.items() if len(points) == 4
    }


# ------------------------------------------------------------------------------------------ faults in a search


@pytest.mark.slow
def test_crashed_and_killed_trials_retry_from_their_checkpoint(tmp_path, fake_data):
    space = write_space(
        tmp_path, epochs=3, num_samples=3, scheduler="{type: fifo}", points="[{lr: 0.05}, {lr: 0.03}, {lr: 0.02}]"
    )
    faults = (
        "stall:lr=0.05:epoch=2:times=1;"  # its worker is killed (kill -9) during epoch 2
        "raise:lr=0.03:epoch=2;"  # raises on every attempt: retried once, then failed
        "raise:lr=0.02:epoch=3:times=1"
    )  # raises once: retried, then completes
    driver = Driver(cli_args(space, tmp_path, fake_data) + ["--max-failures", "1"], tmp_path, "faults", faults)
    pid = int(driver.wait_for(lambda: marker(tmp_path, "stall", 1), "the stall").read_text())
    os.kill(pid, signal.SIGKILL)
    assert driver.wait() == 0, driver.output[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = {float(run.data.params["lr"]): run for run in child_runs(client, "tiny").values()}
    assert sorted(runs) == [0.02, 0.03, 0.05]
    outcome = {lr: (run.info.status, run.data.tags["dt.outcome"]) for lr, run in runs.items()}
    assert outcome == {0.05: ("FINISHED", "completed"), 0.03: ("FAILED", "failed"), 0.02: ("FINISHED", "completed")}
    # why it failed, in MLflow: the exception line as a tag, Ray's error file (the stack it was raised in) as artifact
    failed = runs[0.03]
    assert failed.data.tags["dt.error"] == "RuntimeError: DT_FAULT: injected failure at epoch 2"
    error_text = Path(client.download_artifacts(failed.info.run_id, "error.txt", str(tmp_path))).read_text()
    assert "Failure #" in error_text and "in inject_fault" in error_text and "\x1b[" not in error_text
    assert not any("dt.error" in run.data.tags for lr, run in runs.items() if lr != 0.03)
    # and on the console, one line per crash instead of Ray's traceback
    trial = {lr: run.data.tags["dt.trial_id"] for lr, run in runs.items()}
    injected = "(RuntimeError: DT_FAULT: injected failure at epoch {}); "
    assert f"trial {trial[0.03]} crashed {injected.format(2)}retrying from its last checkpoint" in driver.output
    folder = next((tmp_path / "runs").iterdir())
    assert (
        f"trial {trial[0.03]} failed {injected.format(2)}traceback in {folder / trial[0.03] / 'error.txt'}"
        in driver.output
    )
    assert f"trial {trial[0.02]} crashed {injected.format(3)}retrying" in driver.output
    assert f"trial {trial[0.05]} crashed (" in driver.output  # its worker was killed
    assert "Trial task failed" not in driver.output
    steps = {lr: [step for step, _ in history(client, run)] for lr, run in runs.items()}
    assert steps == {0.05: [1, 2, 3], 0.03: [1], 0.02: [1, 2, 3]}

    resumed = resumed_from(driver.output)
    trial = {lr: run.data.tags["dt.trial_id"] for lr, run in runs.items()}
    assert resumed[trial[0.05]] == [1] and resumed[trial[0.02]] == [2]
    assert resumed[trial[0.03]] == [1]  # the retry; the second failure used up --max-failures 1
    assert len(list((tmp_path / "faults").glob(f"{trial[0.03]}-raise-*"))) == 2
    folder = next((tmp_path / "runs").iterdir())
    for lr in (0.05, 0.02):  # Ray's own per-result log: a retry from scratch would repeat epoch 1
        lines = (folder / trial[lr] / "result.json").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert SearchRecord.load(folder).status == "finished"
