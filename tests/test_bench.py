"""The benchmarks' code paths, tiny and on the CPU: bench/throughput.py's rows, bench/gpu_check.sh's dry run, the
FLOP count that model FLOP utilisation rests on, and the CIFAR-10 subset carried to a GPU machine. Speed itself is
not asserted: that is what the benchmarks are for."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn
from fakedata import learnable_arrays, write_cifar_folder

ROOT = Path(__file__).resolve().parent.parent

TINY = ["--quick", "--models", "basiccnn", "--width", "0.0625", "--batch-size", "16", "--steps", "2"]


def run(*command, env=None, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([str(c) for c in command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def json_rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_throughput_trainers_rows():
    result = run(
        sys.executable,
        "-m",
        "bench.throughput",
        *TINY,
        "--repeats",
        "2",
        "--trainers",
        "backprop,dgl",
        "--sections",
        "trainers",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json_rows(result.stdout)
    assert len(rows) == len(result.stdout.splitlines())  # stdout holds JSON lines only
    trainers = {r["trainer"]: r for r in rows if r["bench"] == "trainer"}
    assert set(trainers) == {"plain", "backprop", "dgl"}
    for row in trainers.values():
        assert row["model"] == "basiccnn" and row["batch_size"] == 16 and row["device"] == "cpu"
        speed = row["images_per_s"]
        assert 0 < speed["min"] <= speed["median"] <= speed["max"]
        assert 0 < row["cpu_busy"] <= 1.5
    # DGL's aux heads, losses and optimizers are extra ops on every step, whatever they cost in time
    assert trainers["dgl"]["ops_per_step"] > trainers["backprop"]["ops_per_step"] > 0
    versus = {r["trainer"]: r for r in rows if r["bench"] == "vs_backprop"}
    assert set(versus) == {"plain", "dgl"}
    assert versus["dgl"]["cost_ratio"]["median"] > 0
    assert "time/image vs backprop" in result.stderr


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--models", "resnet"], "--models"),
        (["--sections", "all"], "--sections"),
        (["--width", "0"], "--width"),
        (["--ray-epochs", "1"], "--ray-epochs"),
        (["--concurrency", "1,x"], "--concurrency"),
    ],
)
def test_throughput_bad_flag_is_one_line(flags, named):
    result = run(sys.executable, "-m", "bench.throughput", "--quick", *flags)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.stderr


@pytest.mark.slow
def test_throughput_concurrency_rows():
    result = run(
        sys.executable,
        "-m",
        "bench.throughput",
        *TINY,
        "--sections",
        "concurrency",
        "--concurrency",
        "1,2",
        "--concurrency-s",
        "1",
        "--concurrency-rounds",
        "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in json_rows(result.stdout) if r["bench"] == "concurrency"]
    assert [(r["trials"], r["threads_per_trial"]) for r in rows][:2] == [(1, 1), (2, 1)]
    for row in rows:
        assert len(row["per_trial_images_per_s"]) == row["trials"]
        assert row["total_images_per_s"]["min"] > 0 and all(v > 0 for v in row["per_trial_images_per_s"])
    assert rows[0]["vs_one_trial"]["median"] == 1.0 and rows[0]["per_cpu_s_vs_one_trial"]["median"] == 1.0
    assert all(0 < r["cpu_busy"] <= 1.5 and r["images_per_cpu_s"] > 0 for r in rows)
    # the machine's own scaling (plain matmuls), divided out of the trials' in vs_machine
    assert rows[0]["machine_vs_one_process"]["median"] == 1.0 and rows[0]["vs_machine"]["median"] == 1.0
    assert rows[1]["machine_vs_one_process"]["min"] > 0 and rows[1]["vs_machine"]["min"] > 0


@pytest.mark.slow
def test_throughput_ray_row():
    result = run(
        sys.executable,
        "-m",
        "bench.throughput",
        *TINY,
        "--sections",
        "ray",
        "--ray-epochs",
        "2",
        "--ray-images",
        "128",
        "--ray-rounds",
        "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [r for r in json_rows(result.stdout) if r["bench"] == "ray"]
    for where in ("ray", "outside", "plain"):
        assert row["images_per_s"][where]["median"] > 0
    assert row["ray_vs_outside"]["median"] > 0 and row["ray_vs_plain"]["median"] > 0
    assert row["epoch_s"]["ray"]["median"] > 0
    # what Tune adds per epoch (report + checkpoint) is measured, and is a fraction of the epoch it follows
    assert 0 < row["tune_cost_per_epoch_s"]["median"] < row["epoch_s"]["ray"]["median"]
    assert row["checkpoint_mb"] > 0


def forward_macs(modules, size: int = 32) -> tuple[list[int], int]:
    """Multiply-accumulates per image of a forward pass through `modules` in turn, from their shapes: one entry per
    conv or linear layer; and the spatial size that comes out."""
    macs = []
    for module in modules:
        if isinstance(module, nn.MaxPool2d):
            size //= 2
        elif isinstance(module, nn.Conv2d):
            macs.append(module.in_channels * module.out_channels * module.kernel_size[0] ** 2 * size * size)
        elif isinstance(module, nn.Linear):
            macs.append(module.in_features * module.out_features)
    return macs, size


def test_training_flops_match_the_modules():
    from bench.gpu_probes import training_flops_per_image
    from models.registry import build_trainer
    from tuner.config.schema import resolve

    cfg = resolve({"trainer": "backprop", "model": "vgg11", "width": 0.125, "num_blocks": 4, "aux_width": 64})
    network_flops, backprop_flops = training_flops_per_image(cfg)
    dgl = build_trainer(cfg.updated(trainer="dgl"), "cpu", steps_per_epoch=1)
    size, network, first_convs = 32, [], []
    for block in dgl.network.blocks:
        macs, size = forward_macs(block.modules(), size)
        network += macs
        first_convs.append(macs[0])
    network += forward_macs(dgl.network.classifier.modules())[0]
    heads = sum(sum(forward_macs(head.modules())[0]) for head in dgl.heads[:-1])  # the last is the classifier
    # 2 FLOPs per MAC: forward, then backward's weight gradients, and input gradients wherever one is needed —
    # backprop: everywhere but the image; DGL: nowhere into a block's (detached) input, but through its heads
    assert network_flops == pytest.approx(2 * sum(network) * 3 - 2 * first_convs[0], rel=1e-6)
    assert backprop_flops == pytest.approx(network_flops, rel=1e-6)  # backprop does exactly the network's work
    _, dgl_flops = training_flops_per_image(cfg.updated(trainer="dgl"))
    assert dgl_flops == pytest.approx(2 * sum(network) * 3 - 2 * sum(first_convs) + 6 * heads, rel=1e-6)


def gpu_check_dry_run(tmp_path, skip: str):
    """bench/gpu_check.sh --dry-run without the sections in `skip`, its rows in tmp_path/out."""
    env = {"OUT": str(tmp_path / "out"), "DT_GPU_CARRY": str(tmp_path / "none"), "PYTHON": sys.executable}
    return tmp_path / "out", run("bash", "bench/gpu_check.sh", "--dry-run", "--skip", skip, env=env)


def test_gpu_check_dry_run(tmp_path):
    out, result = gpu_check_dry_run(tmp_path, "concurrency,search")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    assert not [r for r in rows if "error" in r], rows
    assert rows[0]["bench"] == "peak" and rows[0]["tflops"] > 0
    measured = {(r["trainer"], r["batch_size"]) for r in rows if r["bench"] == "gpu_trainer"}
    assert measured == {(t, b) for t in ("backprop", "dgl", "dni", "cdni") for b in (8, 16)}
    for row in (r for r in rows if r["bench"] == "gpu_trainer"):
        assert row["images_per_s"] > 0 and 0 < row["mfu"] <= row["hfu"]
    assert {r["variant"] for r in rows if r["bench"] == "variant"} == {"cudnn_benchmark_off", "compile"}
    summary = rows[-1]
    assert summary["bench"] == "summary" and summary["mfu_target"] == 0.35
    assert summary["dgl_time_per_image_vs_backprop_at_16"] > 0
    assert json_rows((out / "gpu_check.log").read_text()) == rows
    table = result.stdout[result.stdout.index("GPU check on cpu (dry run):") :].splitlines()[1:]
    assert [line.split()[:2] for line in table] == [
        ["section", "status"],
        ["peak", "ok"],
        ["trainers", "ok"],
        ["variants", "ok"],
        ["concurrency", "left"],
        ["search", "left"],
        ["extra", "left"],
    ]


def test_gpu_check_dry_run_by_environment_variable(tmp_path):
    out = tmp_path / "out"
    result = run(
        "bash",
        "bench/gpu_check.sh",
        "--skip",
        "peak,trainers,variants,concurrency,search",
        env={
            "OUT": str(out),
            "DT_GPU_CHECK_DRY": "1",
            "DT_GPU_CARRY": str(tmp_path / "none"),
            "PYTHON": sys.executable,
        },
    )
    assert result.returncode == 0, result.stdout[-3000:]
    (summary,) = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    assert summary["device"] == "cpu (dry run)"


def test_gpu_check_without_gpu_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run(sys.executable, "-m", "bench.gpu_check", "--out", tmp_path)
    assert result.returncode == 1, result.stderr
    rows = json_rows(result.stdout)
    assert [r["bench"] for r in rows if r.get("skipped") == "no CUDA device is visible"] == [
        "peak",
        "trainers",
        "variants",
        "concurrency",
        "search",
        "extra",
    ]
    assert rows[-1]["device"] == "no CUDA device" and rows[-1]["sections"]["peak"] == "skipped"
    assert "GPU check on no CUDA device:" in result.stdout
    assert "peak skipped 0 no CUDA device is visible" in " ".join(result.stdout.split())


def test_gpu_check_a_failing_or_hanging_section_fails_the_check_and_the_others_run(tmp_path):
    # a section that raises, and one that hangs (as a search waits forever for a GPU Ray never sees): each its own
    # error row and table line, killed at its time limit; the check goes on and exits non-zero
    result = run(
        sys.executable,
        "-m",
        "bench.gpu_check",
        "--dry-run",
        "--out",
        tmp_path,
        "--skip",
        "trainers,concurrency,search",
        "--limit-s",
        "20",
        env={"DT_GPU_CHECK_FAULT": "raise:peak,stall:variants"},
    )
    assert result.returncode == 1, result.stderr
    rows = json_rows(result.stdout)
    assert {"bench": "peak", "error": "RuntimeError: DT_GPU_CHECK_FAULT: injected failure"} in rows
    assert {"bench": "variants", "error": "timed out: killed after 20 s"} in rows
    assert rows[-1]["sections"] == {
        "peak": "error",
        "trainers": "left out",
        "variants": "timeout",
        "concurrency": "left out",
        "search": "left out",
        "extra": "left out",
    }
    assert "variants timeout 2" in " ".join(result.stdout.split())  # 20 s and a little


@pytest.mark.slow
def test_gpu_check_dry_run_with_search(tmp_path):
    out, result = gpu_check_dry_run(tmp_path, "peak,trainers,variants")
    assert result.returncode == 0, result.stdout[-3000:]
    rows = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    assert not [r for r in rows if "error" in r], rows
    assert [r["trials"] for r in rows if r["bench"] == "concurrency"] == [1, 2]
    (search,) = [r for r in rows if r["bench"] == "search"]
    assert search["trials"] == 4 and search["errors"] == [] and search["most_trials_at_once"] >= 1
    trials = [r for r in rows if r["bench"] == "search_trial"]
    assert sorted(r["lr"] for r in trials) == [0.01, 0.02, 0.05, 0.1]
    assert all(r["epochs"] == 2 and len(r["images_per_s"]) == 2 for r in trials)


def test_cifar_subset_keeps_the_layout_and_the_first_images(tmp_path):
    from bench.cifar_subset import main
    from tuner.trial.data import load_arrays

    arrays = learnable_arrays(500, 60, seed=4)
    write_cifar_folder(tmp_path / "full", arrays)
    assert (
        main(["--data-dir", str(tmp_path / "full"), "--out", str(tmp_path / "small"), "--train", "50", "--test", "20"])
        == 0
    )
    small = load_arrays(tmp_path / "small")
    assert small["train_x"].shape == (50, 3, 32, 32) and small["test_x"].shape == (20, 3, 32, 32)
    assert np.array_equal(small["train_x"][:10], arrays["train_x"][:10])  # first 10 of data_batch_1
    assert np.array_equal(small["train_x"][10:20], arrays["train_x"][100:110])  # first 10 of data_batch_2
    assert np.array_equal(small["test_y"], arrays["test_y"][:20])


@pytest.mark.parametrize("flags", [["--train", "7"], ["--train", "5000"], ["--test", "0"]])
def test_cifar_subset_bad_counts_are_one_line(tmp_path, flags, capsys):
    from bench.cifar_subset import main

    write_cifar_folder(tmp_path / "full", learnable_arrays(500, 60, seed=4))
    assert main(["--data-dir", str(tmp_path / "full"), "--out", str(tmp_path / "small"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


# ------------------------------------------------------------------------------------------- search efficiency

EFFICIENCY_SPACE = """
trainer: backprop
model: basiccnn
fixed: {width: 0.0625, epochs: 2, batch_size: 50, train_subset: 100, val_size: 50, augment: false, seed: 0}
search:
  lr: {type: loguniform, low: 0.001, high: 0.3}
scheduler: {type: asha, max_t: 2, grace_period: 1, reduction_factor: 2}
searcher: {type: optuna_tpe, seed: 0, n_startup_trials: 2}
num_samples: 4
max_concurrent: 2
resources: {cpu: 1, gpu: 0}
metric: val_acc
mode: max
"""


class _Trial:
    def __init__(self, trial_id):
        self.trial_id = trial_id


def test_epoch_budget_counts_reports_and_follows_the_searchs_pick():
    from bench.search_efficiency import EpochBudget, epochs_to_reach

    budget = EpochBudget(4, "val_acc", "max")
    reports = [("a", {"val_acc": 0.3}), ("b", {"val_acc": 0.5}), ("b", {"val_acc": 0.4}), ("c", {"diverged": True})]
    for trial_id, result in reports:
        assert not budget.stop_all() and budget(trial_id, result) is False
        budget.on_trial_result(0, [], _Trial(trial_id), result)
    assert budget.stop_all() and budget.spent == 4
    # b's latest epoch (0.4) is what the search would pick b by, not its earlier 0.5; a diverged trial never counts
    assert budget.curve == [(1, 0.3), (2, 0.5), (3, 0.4), (4, 0.4)]
    assert epochs_to_reach(budget.curve, 0.4) == 2 and epochs_to_reach(budget.curve, 0.6) is None


@pytest.mark.slow
def test_search_efficiency_spends_the_budget_and_writes_its_files(tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(EFFICIENCY_SPACE)
    write_cifar_folder(tmp_path / "data", learnable_arrays(150, 20, seed=5))
    # a temp folder of its own, to see the benchmark's removed; short, as Ray's socket paths in it must be
    scratch = Path(tempfile.mkdtemp(prefix="dt-", dir="/tmp"))
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = MlflowClient(uri).create_run(MlflowClient(uri).create_experiment("study")).info.run_id
    result = run(
        sys.executable,
        "-m",
        "bench.search_efficiency",
        *("--space", space, "--data-dir", tmp_path / "data", "--out", out),
        *("--budget-epochs", "3", "--repetitions", "1", "--log-to-run", run_id, "--mlflow-uri", uri),
        env={"TMPDIR": str(scratch)},
    )
    leftovers = list(scratch.glob("dt-search-efficiency-*"))
    shutil.rmtree(scratch, ignore_errors=True)  # Ray's session logs
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "search_efficiency.json").read_text())
    assert {"space", "budget_epochs", "regime", "methods"} <= set(summary) and summary["budget_epochs"] == 3
    assert summary["regime"]["train_images"] == 100 and summary["regime"]["epochs_per_trial"] == 2
    assert set(summary["methods"]) == {"asha_tpe", "random"}
    for data in summary["methods"].values():
        assert {"curves", "final_best", "epochs_to_reach_random_best"} <= set(data)
        (curve,) = data["curves"]
        # the budget stops the search: at most one more epoch from the other trial in flight (2 at once)
        assert 3 <= curve[-1][0] == data["epochs_reported"][0] <= 4
        assert [epochs for epochs, _ in curve] == list(range(1, len(curve) + 1))
        assert data["final_best"] == [curve[-1][1]] and 0 < curve[-1][1] <= 1
    random_reach = summary["methods"]["random"]["epochs_to_reach_random_best"]
    assert random_reach[0] is not None and random_reach[0] <= summary["methods"]["random"]["epochs_reported"][0]
    assert (out / "search_efficiency.png").stat().st_size > 10_000
    assert not leftovers  # the trials' folder is removed
    logged = [artifact.path for artifact in MlflowClient(uri).list_artifacts(run_id)]
    assert sorted(logged) == ["search_efficiency.json", "search_efficiency.png"]
    # a run that is not there: one line, before anything starts (the same store, so no second database to create)
    result = run(sys.executable, "-m", "bench.search_efficiency", "--log-to-run", "0123abcd", "--mlflow-uri", uri)
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == 2 and line.startswith(f"error: --log-to-run 0123abcd: no such run in {uri}")


def test_search_efficiency_needs_asha_and_tpe(tmp_path):
    space = tmp_path / "fifo.yaml"
    space.write_text(
        EFFICIENCY_SPACE.replace("type: asha, max_t: 2, grace_period: 1, reduction_factor: 2", "type: fifo")
    )
    out = tmp_path / "out"
    result = run(sys.executable, "-m", "bench.search_efficiency", "--space", space, "--out", out)
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.strip().splitlines() == [
        f"error: --space {space}: has scheduler fifo and searcher optuna_tpe; this comparison needs scheduler asha "
        f"and searcher optuna_tpe"
    ]
