"""A search never reads the test split: a trial trains and validates with a test split that raises on any access,
and only the final evaluation of the chosen configuration (search.best_test_accuracy) opens it."""

import shutil
from types import SimpleNamespace

import pytest
from fakedata import learnable_arrays

import tuner.search.driver
import tuner.trial.trainable as trial
from tuner.trial.data import Split, make_splits

SEALED = {"open": False, "reads": 0}


class SealedSplit(Split):
    """A split whose images and labels raise unless the final evaluation has opened it."""

    def __getattribute__(self, name):
        if name in ("x", "y"):
            if not SEALED["open"]:
                raise AssertionError("the test split was read during the search")
            SEALED["reads"] += 1
        return object.__getattribute__(self, name)


def sealed_splits(*args, **kwargs):
    data = make_splits(*args, **kwargs)
    data.test = SealedSplit(data.test.x, data.test.y)
    return data


def test_a_trial_never_reads_the_test_split_and_the_final_evaluation_does(monkeypatch, tmp_path):
    arrays = learnable_arrays(300, 50, seed=0)
    config = {
        "trainer": "dgl",
        "model": "basiccnn",
        "width": 0.125,
        "aux_width": 32,
        "epochs": 2,
        "batch_size": 32,
        "val_size": 100,
        "device": "cpu",
    }
    reports = []

    def report(metrics, checkpoint=None):
        kept = None
        if checkpoint is not None:  # the trial's directory is temporary: keep a copy, as Tune's storage would
            kept = tmp_path / f"ckpt{len(reports)}"
            shutil.copytree(checkpoint.path, kept)
        reports.append((metrics, kept))

    monkeypatch.setattr(trial, "make_splits", sealed_splits)
    monkeypatch.setattr(trial, "prepare_environment", lambda: None)
    monkeypatch.setattr(trial, "limit_threads", lambda n: None)
    monkeypatch.setattr(trial.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t0"))
    monkeypatch.setattr(trial.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(trial.tune, "report", report)
    SEALED.update(open=False, reads=0)

    trial.train_trial(config, arrays)
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert not any(k.startswith("test") for m, _ in reports for k in m)

    with pytest.raises(AssertionError, match="test split was read"):  # the seal holds
        trial.build_trial(config, arrays)[1].test.batches(10, train=False).__next__()

    SEALED["open"] = True
    best = SimpleNamespace(config=config, checkpoint=trial.tune.Checkpoint.from_directory(str(reports[-1][1])))
    accuracy = tuner.search.driver.best_test_accuracy(best, arrays)
    assert 0.0 <= accuracy <= 1.0 and SEALED["reads"] > 0


def test_the_validation_split_follows_split_seed_not_the_model_seed():
    import torch

    arrays = learnable_arrays(300, 20, seed=0)
    base = {
        "trainer": "backprop",
        "model": "basiccnn",
        "width": 0.125,
        "val_size": 50,
        "train_subset": 100,
        "device": "cpu",
    }
    val = {
        key: trial.build_trial({**base, **extra}, arrays)[1].val.x
        for key, extra in {"a": {"seed": 0}, "b": {"seed": 7}, "c": {"seed": 0, "split_seed": 1}}.items()
    }
    assert torch.equal(val["a"], val["b"])
    assert not torch.equal(val["a"], val["c"])
