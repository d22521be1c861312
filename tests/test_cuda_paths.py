"""What a CUDA run needs that a CPU run would not show by itself, pinned on the CPU: tensors that cross processes
are never re-sent or aliased, checkpoints load through the host, and the process-wide switches a GPU wants."""

import queue
import threading

import pytest
import torch
from fakedata import learnable_arrays
from helpers import small_trainer

from models.pipeline_stage import blocks_state, load_blocks_state, run_stage
from tuner.trial.data import make_splits


@pytest.fixture(scope="module")
def data():
    return make_splits(learnable_arrays(96, 10, seed=1), val_size=32, train_subset=None, seed=0, device="cpu")


def make(data, **overrides):
    return small_trainer(data, **{"aux_width": 32, "epochs": 1, "val_size": 32, "momentum": 0.9, **overrides})


def storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_a_stage_forwards_labels_it_owns_not_the_ones_it_received(data):
    # torch refuses to send on a CUDA tensor received from another process: the labels a stage passes to the next
    # must be its own copy. Run stage 0 of 2 in this process, with plain queues for the links.
    trainer = make(data)
    jobs, inbox, outbox, results = queue.Queue(), queue.Queue(), queue.Queue(), queue.Queue()
    received = list(data.train.batches(32, train=True, seed=0, epoch=0))[:2]
    jobs.put({"epoch": 0, "state": blocks_state(trainer, [0])})
    jobs.put(None)
    for batch in received:
        inbox.put(batch)
    inbox.put(None)
    run_stage(0, [0], trainer.cfg, "cpu", 3, 1, jobs, inbox, outbox, results, threading.Event())
    assert results.get()[0] == "done"
    for (_, y_in), (_, y_out) in zip(received, [outbox.get() for _ in received]):
        assert torch.equal(y_in, y_out) and storage(y_in) != storage(y_out)
    assert outbox.get() is None


def test_optimizer_state_loaded_into_a_stage_is_its_own(data):
    # Optimizer.load_state_dict keeps a tensor already on the right device: state received from another process
    # would alias that process's memory (gone when it exits). Whatever load_blocks_state is given, it copies.
    source = make(data)
    source.train_epoch(data.train.batches(32, train=True, seed=0, epoch=0))
    state = blocks_state(source, [0, 1])
    assert state["optimizers"][0]["state"], "momentum buffers exist after an epoch"
    target = make(data)
    load_blocks_state(target, state)
    given = {storage(t) for opt in state["optimizers"].values() for s in opt["state"].values() for t in s.values()}
    held = [t for i in (0, 1) for s in target.optimizers[i].state.values() for t in s.values()]
    assert held and not given & {storage(t) for t in held}


def test_a_checkpoint_loads_through_the_host(data, tmp_path):
    # loaded straight to a GPU, Adam's `step` counts would live there and cost a host sync every step; through the
    # host, Optimizer.load_state_dict moves what belongs on the trainer's device and leaves `step` on the CPU
    from ray import tune

    from tuner.trial.trainable import load_checkpoint, save_checkpoint

    source = make(data, optimizer="adamw")
    source.train_epoch(data.train.batches(32, train=True, seed=0, epoch=0))
    save_checkpoint(source, tmp_path)

    class Receiver:  # a trainer on another device than the checkpoint's, as far as load_checkpoint can tell
        device = torch.device("meta")

        def load_state_dict(self, state):
            self.state = state

    receiver = Receiver()
    load_checkpoint(receiver, tune.Checkpoint.from_directory(tmp_path))
    steps = [s["step"] for opt in receiver.state["optimizers"] for s in opt["state"].values()]
    assert steps and all(step.device.type == "cpu" for step in steps)
    assert receiver.state["parts"]["network.blocks.0.0.weight"].device.type == "cpu"

    target = make(data, optimizer="adamw")
    target.load_state_dict(receiver.state)
    assert all(s["step"].device.type == "cpu" for opt in target.optimizers for s in opt.state.values())


def test_a_search_whose_checkpoints_would_not_fit_is_refused_before_any_trial(tmp_path, monkeypatch, capsys):
    # bp_vgg16: 48 trials of full-width VGG16 with SGD momentum, ~118 MB a checkpoint; 300 MB free passes the
    # storage check, not the checkpoints'
    import shutil

    from tuner.run import main

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=300 * 2**20))
    flags = ["--storage", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert main(["--space", "bp_vgg16", *flags, "--data-dir", str(tmp_path / "no-data")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --storage {tmp_path / 'runs'}: ")
    assert "checkpoints of 48 trials need" in lines[0] and "0.3 GiB free" in lines[0]
    assert not list(tmp_path.glob("runs/*/search.json"))


def test_stage_hits_on_different_devices_join_on_the_trainers():
    # with one GPU per stage, each stage's counts are on its own device: moved before they are joined (the meta
    # device stands in for a second one)
    from models.pipeline import joined_hits

    done = [{"correct": torch.tensor([3, 4])}, {"correct": torch.tensor([5], device="meta")}]
    assert joined_hits(done, torch.device("meta")).shape == (3,)
    assert joined_hits(done, torch.device("meta")).device.type == "meta"
    assert joined_hits([{"correct": None}, *done], torch.device("cpu")) is None


PIPELINED_ON_GPUS = """
trainer: dgl
model: basiccnn
fixed: {{width: 0.0625, epochs: 1, aux_width: 32}}
search:
  lr: {{type: loguniform, low: 0.01, high: 0.1}}
  stages: {{type: choice, values: [1, {stages}]}}
num_samples: 1
resources: {{cpu: 1, gpu: {gpu}}}
metric: val_acc
mode: max
"""


def gpu_space(tmp_path, stages: int, gpu: float):
    from tuner.config.space_file import load_space

    path = tmp_path / f"gpus-{stages}-{gpu}.yaml"
    path.write_text(PIPELINED_ON_GPUS.format(stages=stages, gpu=gpu))
    return load_space(str(path))


@pytest.mark.parametrize(
    "stages, gpu, nodes, refusal",
    [
        (
            3,
            0.5,
            [8, 1],
            "resources.gpu (--gpus-per-trial) 0.5: a trial of 3 stages asks Ray for 1.5 GPUs on one "
            "node; above 1, Ray places whole GPUs only",
        ),
        (
            3,
            1,
            [2, 2],
            "resources.gpu (--gpus-per-trial) 1: a trial of 3 stages asks Ray for 3 GPU on one node; the "
            "largest node Ray sees has 2",
        ),
        (
            2,
            0.25,
            [],
            "resources.gpu (--gpus-per-trial) 0.25: a trial of 2 stages asks Ray for 0.5 GPU on one node; the "
            "largest node Ray sees has 0",
        ),
        (2, 0.5, [1], None),
        (3, 0, [], None),
    ],
)
def test_trials_ray_could_never_place_are_refused(tmp_path, stages, gpu, nodes, refusal):
    from tuner.errors import SetupError
    from tuner.search.opening import check_gpu_placement

    space = gpu_space(tmp_path, stages, gpu)
    if refusal is None:
        check_gpu_placement(space, nodes)
        return
    with pytest.raises(SetupError) as refused:
        check_gpu_placement(space, nodes)
    assert str(refused.value) == refusal


@pytest.mark.slow
def test_a_search_asking_for_gpus_this_machine_lacks_is_refused_before_any_trial(tmp_path):
    # Ray would wait for them forever; the local Ray sees this machine's GPUs, none here. A subprocess, since the
    # refusal comes once Ray is up, and a Ray started in the test process would stay for the tests after it.
    import os
    import subprocess
    import sys
    from pathlib import Path

    from fakedata import write_cifar_folder

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    space = tmp_path / "gpus.yaml"
    space.write_text(PIPELINED_ON_GPUS.format(stages=2, gpu=0.5))
    data_dir = write_cifar_folder(tmp_path / "cifar", learnable_arrays(100, 20, seed=3))
    flags = ["--storage", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    root = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-m", "tuner.run", "--space", str(space), *flags, "--data-dir", str(data_dir)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: resources.gpu (--gpus-per-trial) 0.5: a trial of 2 stages asks Ray for 1 GPU on one node; the "
        "largest node Ray sees has 0"
    ]
    assert not list(tmp_path.glob("runs/*/search.json"))


def test_a_trainer_on_a_gpu_lets_cudnn_time_its_convolutions():
    from models.trainer_base import seed_process

    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        seed_process(0, torch.device("cpu"))
        assert not torch.backends.cudnn.benchmark
        seed_process(0, torch.device("cuda"))  # sets switches only: no GPU needed
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before
