"""`python -m tuner.train`: one config, no Ray; a JSON line at the end; one-line errors."""

import json
import subprocess
import sys

import pytest
from fakedata import learnable_arrays, write_cifar_folder

from tuner.train import main
from tuner.trial.metric_names import block_metric


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, learnable_arrays(900, 100, seed=5))
    return root


def train_cli(*args):
    return subprocess.run([sys.executable, "-m", "tuner.train", *args], capture_output=True, text=True, timeout=300)


COMMON = [
    "--model",
    "basiccnn",
    "--epochs",
    "2",
    "--train-subset",
    "500",
    "--threads",
    "1",
    "--set",
    "width=0.0625",
    "val_size=300",
    "batch_size=50",
    "dropout=0.1",
]


def test_train_prints_epochs_and_a_final_json_line(data_dir):
    result = train_cli("--trainer", "dgl", "--data-dir", str(data_dir), *COMMON, "aux_width=32", "--test")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert sum(line.startswith("epoch") for line in lines) == 2
    final = json.loads(lines[-1])
    assert final["epochs"] == 2 and final["trainer"] == "dgl"
    for key in (
        "val_acc",
        "val_loss",
        "train_loss",
        "train_acc",
        "images_per_s",
        "test_acc",
        block_metric(1, "val"),
        block_metric(3, "val"),
    ):
        assert key in final, key
    assert 0.0 <= final["val_acc"] <= 1.0 and final["val_acc"] > 0.5  # chance is 0.1


def test_dgl_with_one_block_matches_backprop_from_the_command_line(data_dir, capsys):
    outputs = {}
    for trainer in ("backprop", "dgl"):
        assert main(["--trainer", trainer, "--data-dir", str(data_dir), *COMMON, "num_blocks=1"]) == 0
        outputs[trainer] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("train_loss", "val_loss", "val_acc"):
        assert outputs["dgl"][key] == outputs["backprop"][key], key


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--set", "lr=fast"], "lr"),
        (["--set", "aux_widht=3"], "aux_widht"),
        (["--set", "aux_head=transformer"], "aux_head"),
        (["--trainer", "sgd"], "trainer"),
        (["--set", "num_blocks=9", "--model", "basiccnn"], "num_blocks"),
    ],
)
def test_bad_settings_are_one_line_errors(args, fragment, capsys):
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines


def test_missing_data_folder_is_one_line_error(tmp_path, capsys):
    assert main(["--trainer", "backprop", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "nowhere" in lines[0], lines
