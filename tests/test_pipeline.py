"""Pipelined DGL is sequential DGL on a different clock: the same parameters to the last bit, checkpoints that resume
exactly, and a stage that dies ends the epoch with a clear error and leaves no process behind (CPU, ~1 minute: the
stage processes start with a fresh interpreter each)."""

import io
import itertools
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fakedata import learnable_arrays
from helpers import small_trainer

from models.pipeline import PipelinedDGL, PipelineError
from models.pipeline_stage import balanced_partition
from models.trainers import DGL
from tuner.config.schema import resolve
from tuner.errors import ConfigError
from tuner.trial.data import make_splits

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data():
    return make_splits(learnable_arrays(480, 100, seed=1), val_size=160, train_subset=None, seed=0, device="cpu")


@pytest.fixture()
def two_threads():
    # a stage gets this process's threads / stages = 1; the sequential run below takes 1 too: bit equality needs it
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def make(data, **overrides):
    return small_trainer(data, **{"aux_width": 32, "epochs": 2, "val_size": 160, "local_loss": "predsim", **overrides})


def epoch_batches(data, epoch):
    return data.train.batches(32, train=True, seed=0, epoch=epoch)


def assert_same_state(want: dict, got: dict) -> None:
    assert want["epoch"] == got["epoch"]
    assert want["parts"].keys() == got["parts"].keys()
    for key, value in want["parts"].items():
        assert torch.equal(value, got["parts"][key]), key
    for opt_want, opt_got in zip(want["optimizers"], got["optimizers"], strict=True):
        assert opt_want["param_groups"] == opt_got["param_groups"]
        for index, buffers in opt_want["state"].items():
            for name, value in buffers.items():
                assert torch.equal(value, opt_got["state"][index][name]), (index, name)
    assert want["schedulers"] == got["schedulers"]


def test_partition_minimises_the_costliest_stage():
    assert balanced_partition([1, 1, 1, 1, 4], 2) == [[0, 1, 2, 3], [4]]
    assert balanced_partition([5, 1, 1, 1], 2) == [[0], [1, 2, 3]]
    rng = random.Random(0)
    for _ in range(30):
        costs = [rng.random() for _ in range(rng.randint(1, 8))]
        stages = rng.randint(1, len(costs))
        groups = balanced_partition(costs, stages)
        assert [i for group in groups for i in group] == list(range(len(costs))) and all(groups)
        splits = itertools.combinations(range(1, len(costs)), stages - 1)
        best = min(max(sum(costs[a:b]) for a, b in zip((0, *cut), (*cut, len(costs)))) for cut in splits)
        assert max(sum(costs[i] for i in group) for group in groups) == pytest.approx(best)


def test_stages_must_fit_the_trainer_and_the_blocks():
    with pytest.raises(ConfigError, match="'stages' > 1 needs trainer dgl"):
        resolve({"trainer": "backprop", "stages": 2})
    with pytest.raises(ConfigError, match=r"'stages' must lie in \[1, 3\]"):
        resolve({"model": "basiccnn", "stages": 4})


def test_pipelined_dgl_matches_sequential_dgl_bit_for_bit_and_resumes_exactly(data, two_threads):
    sequential = make(data)
    torch.set_num_threads(1)
    metrics = [sequential.train_epoch(epoch_batches(data, epoch)) for epoch in range(2)]
    torch.set_num_threads(2)
    assert type(sequential) is DGL

    first = make(data, stages=2)
    assert isinstance(first, PipelinedDGL) and first.stage_threads == 1
    try:
        assert first.train_epoch(epoch_batches(data, 0)) == metrics[0]
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
        assert first.train_epoch(epoch_batches(data, 1)) == metrics[1]  # the stages kept their state
    finally:
        first.close()
    assert_same_state(sequential.state_dict(), first.state_dict())

    resumed = make(data, stages=3)  # a checkpoint does not depend on how the blocks were staged
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    try:
        assert resumed.train_epoch(epoch_batches(data, 1)) == metrics[1]
    finally:
        resumed.close()
    assert_same_state(sequential.state_dict(), resumed.state_dict())
    val = data.val
    assert resumed.evaluate(val.batches(100, train=False)) == sequential.evaluate(val.batches(100, train=False))


def test_moving_a_cut_between_epochs_changes_nothing_but_the_partition(data, two_threads):
    sequential = make(data)
    torch.set_num_threads(1)
    metrics = [sequential.train_epoch(epoch_batches(data, epoch)) for epoch in range(2)]
    torch.set_num_threads(2)

    pipelined = make(data, stages=2)
    try:
        assert pipelined.train_epoch(epoch_batches(data, 0)) == metrics[0]
        pipelined.rebalanced = False  # whatever the first epoch decided, measure a stage 0 that is far the slowest
        before = pipelined.partition
        slow_first = [1.0, 1e-3] if len(before[0]) > 1 else [1e-3, 1.0]
        assert pipelined.rebalance(slow_first) and pipelined.partition != before and pipelined.processes == []
        assert pipelined.train_epoch(epoch_batches(data, 1)) == metrics[1]  # restarted with the new cut
        assert pipelined.rebalanced  # train_epoch re-cuts once only
    finally:
        pipelined.close()
    assert_same_state(sequential.state_dict(), pipelined.state_dict())


def running(pid: int) -> bool:
    """Alive, and not a zombie waiting for a parent that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_stage_fails_the_epoch_clearly_and_leaves_no_process(data):
    trainer, pids = make(data, stages=2), []

    def batches_then_kill():
        for step, batch in enumerate(epoch_batches(data, 0)):
            if step == 3:
                pids.extend(process.pid for process in trainer.processes)
                os.kill(pids[1], signal.SIGKILL)
            yield batch

    with pytest.raises(PipelineError, match=r"stage 1 \(blocks 2-3\)|stage 1 \(block 3\)") as raised:
        trainer.train_epoch(batches_then_kill())
    assert "died (exit code -9)" in str(raised.value) and "epoch 1 did not complete" in str(raised.value)
    assert trainer.processes == [] and len(pids) == 2 and not any(running(pid) for pid in pids)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("dgl-stage")]


def test_a_stage_that_raises_names_the_error(data):
    trainer = make(data, stages=2)
    x, y = next(iter(epoch_batches(data, 0)))
    with pytest.raises(PipelineError, match=r"stage 0 \(block 1\) raised: IndexError: Target \d+ is out of bounds"):
        trainer.train_epoch(iter([(x, y + 100)]))  # labels its first head's loss cannot take
    assert trainer.processes == []


PARENT = """
import os, json, signal
from fakedata import learnable_arrays
from tuner.config.schema import resolve
from tuner.trial.data import make_splits
from models.registry import build_trainer

if __name__ == "__main__":
    data = make_splits(learnable_arrays(160, 10, seed=1), val_size=0, train_subset=None, seed=0, device="cpu")
    cfg = resolve({"model": "basiccnn", "width": 0.125, "aux_width": 32, "batch_size": 32, "stages": 2, "val_size": 0})
    trainer = build_trainer(cfg, "cpu", 5)

    def batches():
        for step, batch in enumerate(data.train.batches(32, train=True)):
            if step == 2:
                print(json.dumps([p.pid for p in trainer.processes]), flush=True)
                os.kill(os.getpid(), signal.SIGKILL)  # the trial's process dies as a killed Ray worker does
            yield batch

    trainer.train_epoch(batches())
"""


def test_stages_exit_when_their_parent_is_killed():
    result = subprocess.run(
        [sys.executable, "-c", PARENT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    pids = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(pids) == 2
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in pids):
        assert time.monotonic() < deadline, "a stage outlived its parent"
        time.sleep(0.2)


def run_bench(*flags):
    return subprocess.run(
        [sys.executable, "-m", "bench.parallel", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_bench_rows_and_a_clean_gpu_skip():
    result = run_bench(
        "--quick",
        "--model",
        "basiccnn",
        "--width",
        "0.0625",
        "--batch-size",
        "16",
        "--steps",
        "2",
        "--warmup-steps",
        "1",
        "--rounds",
        "2",
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    speeds = {row["runner"]: row["images_per_s"] for row in rows if row["bench"] == "parallel"}
    assert set(speeds) == {"dgl_1_thread", "dgl_2_threads", "pipelined_2_stages_x_1_thread", "backprop_2_threads"}
    assert all(0 < v["min"] <= v["median"] <= v["max"] for v in speeds.values())
    ratios = {row["over"]: row["ratio"]["median"] for row in rows if row["bench"] == "parallel_ratio"}
    assert ratios.keys() == {"dgl_1_thread", "dgl_2_threads", "backprop_2_threads"}
    setup = next(row for row in rows if row["bench"] == "parallel_setup")
    assert [b for stage in setup["partition"] for b in stage] == [1, 2, 3] and len(setup["load_average_before"]) == 3
    if not torch.cuda.is_available():
        assert {"bench": "parallel_skipped", "section": "gpu", "reason": "no CUDA device"} in rows


@pytest.mark.parametrize(
    "flags, named",
    [(["--cores", "1"], "--cores"), (["--sections", "tpu"], "--sections"), (["--model", "vgg99"], "--model")],
)
def test_bench_bad_flag_is_one_line(flags, named):
    result = run_bench(*flags)
    assert result.returncode == 2 and named in result.stderr and len(result.stderr.strip().splitlines()) == 1


PIPELINED_SPACE = """
trainer: dgl
model: basiccnn
fixed: {width: 0.0625, epochs: 2, batch_size: 50, train_subset: 400, val_size: 200, eval_batch_size: 200,
        aux_head: pooled_mlp, aux_width: 32, stages: 2}
search:
  lr: {type: loguniform, low: 0.01, high: 0.1}
scheduler: {type: asha, max_t: 2, grace_period: 1, reduction_factor: 2}
searcher: {type: optuna_tpe, seed: 0, points_to_evaluate: [{lr: 0.05}]}
num_samples: 1
max_concurrent: 1
resources: {cpu: 1, gpu: 0}
metric: val_acc
mode: max
"""


@pytest.mark.slow
def test_a_pipelined_trial_runs_in_a_real_search(tmp_path):
    from fakedata import write_cifar_folder
    from mlflow.tracking import MlflowClient

    from tuner.config.space_file import load_space
    from tuner.search.driver import trainable_for

    space_file = tmp_path / "pipelined.yaml"
    space_file.write_text(PIPELINED_SPACE)
    data_dir = write_cifar_folder(tmp_path / "cifar", learnable_arrays(600, 100, seed=3))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flags = ["--space", str(space_file), "--data-dir", str(data_dir), "--storage", str(tmp_path / "runs")]
    result = subprocess.run(
        [sys.executable, "-m", "tuner.run", *flags, "--mlflow-uri", uri],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in output, output[-3000:]

    client = MlflowClient(uri)
    (trial,) = client.search_runs([client.get_experiment_by_name("pipelined").experiment_id], "tags.dt.role = 'trial'")
    assert trial.data.tags["dt.outcome"] == "completed" and trial.data.params["stages"] == "2"
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "val_acc")] == [1, 2]
    assert {"blocks/val_acc_b01", "blocks/val_acc_b02", "blocks/val_acc_b03"} <= set(trial.data.metrics)
    # the trial's stages are its child processes: Ray gives the trial one bundle holding every stage's share
    resources = trainable_for(load_space(str(space_file)), {})._resources({"stages": 2})
    assert resources.bundles == [{"CPU": 2.0}]
