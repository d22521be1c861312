import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import learnable_arrays, write_cifar_folder
from torchvision.datasets import CIFAR10

from tuner.errors import ConfigError
from tuner.trial.data import (
    DataError,
    Split,
    augment,
    load_arrays,
    make_splits,
    normalise,
    stratified_split,
    stratified_subset,
)

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = Path(os.environ.get("CIFAR10_DIR", REPO / ".." / "shared" / "data"))


@pytest.fixture(scope="module")
def arrays():
    return learnable_arrays(200, 50, seed=0)


@pytest.fixture
def folder(tmp_path, arrays):
    return write_cifar_folder(tmp_path, arrays)


def _rewrite(path, change):
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    change(entry)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


# ---------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("given", ["parent", "itself"])
def test_generated_folder_loads(folder, arrays, given):
    loaded = load_arrays(str(folder.parent if given == "parent" else folder))
    assert loaded["train_x"].shape == (200, 3, 32, 32) and loaded["train_x"].dtype == np.uint8
    assert loaded["train_y"].shape == (200,) and loaded["train_y"].dtype == np.int64
    assert loaded["test_x"].shape == (50, 3, 32, 32)
    for key in arrays:
        np.testing.assert_array_equal(loaded[key], arrays[key])


def test_folder_with_any_name_loads(tmp_path, folder, arrays):
    renamed = folder.rename(tmp_path / "my_cifar")
    np.testing.assert_array_equal(load_arrays(renamed)["test_y"], arrays["test_y"])


def test_md5_mismatch_rejected_by_torchvision_but_loads_here(folder):
    with pytest.raises(RuntimeError, match="corrupted"):
        CIFAR10(str(folder.parent), train=True, download=False)
    assert len(load_arrays(folder.parent)["train_y"]) == 200


@pytest.mark.parametrize(
    "file, damage, message",
    [
        ("data_batch_3", lambda p: p.unlink(), "missing"),
        ("test_batch", lambda p: p.write_bytes(b"this is not a pickle"), "not a readable pickle"),
        ("data_batch_2", lambda p: _rewrite(p, lambda e: e.update(data=e["data"][:, :3000])), "shape"),
        ("data_batch_5", lambda p: _rewrite(p, lambda e: e.update(labels=[10] + e["labels"][1:])), "0..9"),
        ("data_batch_1", lambda p: _rewrite(p, lambda e: e.update(labels=e["labels"][:-1])), "labels"),
        ("data_batch_4", lambda p: _rewrite(p, lambda e: e.update(data=e["data"].astype(np.float32))), "uint8"),
        ("batches.meta", lambda p: _rewrite(p, lambda e: e.pop("label_names")), "label_names"),
    ],
)
def test_malformed_folder_names_the_file(folder, file, damage, message):
    damage(folder / file)
    with pytest.raises(DataError, match=message) as info:
        load_arrays(folder)
    assert str(folder / file) in str(info.value) and "\n" not in str(info.value)


def test_folder_without_cifar(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_arrays(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        load_arrays(tmp_path / "absent")


def test_no_data_and_no_download_gives_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(DataError, match="pass --data-dir DIR") as info:
        load_arrays(None, download_root=tmp_path / "data")
    assert str(tmp_path / "data") in str(info.value)


def test_none_uses_a_copy_in_download_root(tmp_path, arrays, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", pytest.fail)
    write_cifar_folder(tmp_path, arrays)
    assert len(load_arrays(None, download_root=tmp_path)["test_y"]) == 50


@pytest.mark.skipif(not (REAL_DIR / "cifar-10-batches-py").is_dir(), reason=f"no CIFAR-10 at {REAL_DIR}")
def test_real_cifar10_loads():
    real = load_arrays(REAL_DIR)
    assert real["train_x"].shape == (50000, 3, 32, 32) and real["test_x"].shape == (10000, 3, 32, 32)
    assert np.bincount(real["test_y"], minlength=10).tolist() == [1000] * 10
    assert np.bincount(real["train_y"], minlength=10).tolist() == [5000] * 10


# ---------------------------------------------------------------------------------------------- splits


def test_stratified_split_is_disjoint_balanced_and_seeded(arrays):
    labels = arrays["train_y"]
    keep, held = stratified_split(labels, 55, seed=3)
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(labels)
    counts = np.bincount(labels[held], minlength=10)
    assert counts.sum() == 55 and counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(stratified_split(labels, 55, seed=3)[1], held)
    assert not np.array_equal(stratified_split(labels, 55, seed=4)[1], held)


def test_stratified_split_follows_unbalanced_classes():
    labels = np.array([0] * 80 + [1] * 20)
    _, held = stratified_split(labels, 10, seed=0)
    assert np.bincount(labels[held]).tolist() == [8, 2]


def test_stratified_subset(arrays):
    labels = arrays["train_y"]
    keep, _ = stratified_split(labels, 50, seed=0)
    subset = stratified_subset(keep, labels, 30, seed=1)
    assert len(subset) == 30 and np.isin(subset, keep).all()
    assert np.bincount(labels[subset], minlength=10).tolist() == [3] * 10
    with pytest.raises(DataError):
        stratified_subset(keep, labels, len(keep) + 1, seed=1)


def test_make_splits(arrays):
    data = make_splits(arrays, val_size=50, train_subset=100, seed=0, device="cpu")
    assert (len(data.train), len(data.val), len(data.test)) == (100, 50, 50)
    assert data.train.x.dtype == torch.uint8 and data.train.y.dtype == torch.int64
    # no image is in both train and val (the fake images are noisy, so distinct images differ)
    train_rows = {bytes(row) for row in data.train.x.flatten(1).numpy()}
    assert not any(bytes(row) in train_rows for row in data.val.x.flatten(1).numpy())
    assert np.bincount(data.val.y.numpy(), minlength=10).tolist() == [5] * 10
    assert np.bincount(data.train.y.numpy(), minlength=10).tolist() == [10] * 10
    whole = make_splits(arrays, val_size=50, train_subset=None, seed=0, device="cpu")
    assert len(whole.train) == 150
    with pytest.raises(ConfigError, match="val_size 150 \\+ train_subset 60"):
        make_splits(arrays, val_size=150, train_subset=60, seed=0, device="cpu")


# ---------------------------------------------------------------------------------------------- on the device


def _candidates(image, pad=4):
    """Every crop of the zero-padded image, and the mirror of each."""
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    crops = [padded[:, dy : dy + 32, dx : dx + 32] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return {
        (dy, dx, flip): c.flip(-1) if flip else c
        for (dy, dx), c in zip([(a, b) for a in range(2 * pad + 1) for b in range(2 * pad + 1)], crops)
        for flip in (False, True)
    }


def test_augment_is_a_crop_and_flip_per_image():
    x = torch.randint(1, 256, (32, 3, 32, 32), dtype=torch.uint8)  # no zeros, so padding is recognisable
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    seen = []
    for image, result in zip(x, out):
        matches = [key for key, c in _candidates(image).items() if torch.equal(c, result)]
        assert matches, "output is not a crop (or mirrored crop) of its own padded input"
        seen.append(matches[0])
    assert any(flip for _, _, flip in seen) and not all(flip for _, _, flip in seen)
    assert any((dy, dx) != (4, 4) for dy, dx, _ in seen)
    assert not torch.equal(out, x)


def test_flip_mirrors_and_crop_shifts():
    # a left-right ramp: a mirror reverses it, a shift moves it and brings in zero padding
    ramp = torch.arange(1, 33, dtype=torch.uint8).expand(64, 3, 32, 32).contiguous()
    out = augment(ramp, torch.Generator().manual_seed(1))
    reversed_rows = (out[:, 0, 16, 8:24].int().diff(dim=-1) < 0).all(dim=-1)
    assert reversed_rows.any() and not reversed_rows.all()
    assert (out == 0).any()  # padding shows at the border of shifted crops


def test_batches_normalised_and_complete(arrays):
    split = make_splits(arrays, val_size=0, train_subset=None, seed=0, device="cpu").train
    xs, ys = zip(*split.batches(64, train=False))
    assert [len(y) for y in ys] == [64, 64, 64, 8]  # the last partial batch is kept for evaluation
    x = torch.cat(xs)
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, normalise(split.x))
    assert torch.equal(normalise(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))
    train_sizes = [len(y) for _, y in split.batches(64, train=True)]
    assert train_sizes == [64, 64, 64] == [64] * split.num_batches(64, train=True)
    assert split.num_batches(64, train=False) == 4
    # training shuffles: every image once per epoch (without augmentation, the labels and images are a permutation)
    ys = torch.cat([y for _, y in split.batches(50, train=True, augment=False)])
    assert sorted(ys.tolist()) == sorted(split.y.tolist()) and not torch.equal(ys, split.y)


def test_batches_are_a_function_of_seed_and_epoch(arrays):
    split = Split(torch.from_numpy(arrays["train_x"]), torch.from_numpy(arrays["train_y"]))

    def epoch(seed, e):
        xs, ys = zip(*split.batches(32, train=True, seed=seed, epoch=e))
        return torch.cat(xs), torch.cat(ys)

    first = epoch(0, 0)
    again = epoch(0, 0)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], epoch(0, 1)[0])
    assert not torch.equal(first[0], epoch(1, 0)[0])


def test_fake_data_is_learnable_through_augmentation():
    # nearest class-mean colour on augmented images: the class signal survives crops, flips and noise
    data = make_splits(learnable_arrays(500, 200, seed=1), val_size=0, train_subset=None, seed=0, device="cpu")
    x, y = next(data.train.batches(500, train=True))
    colours = x.mean(dim=(2, 3))
    centroids = torch.stack([colours[y == c].mean(0) for c in range(10)])
    test_x, test_y = next(data.test.batches(200, train=False))
    predicted = torch.cdist(test_x.mean(dim=(2, 3)), centroids).argmin(1)
    assert (predicted == test_y).float().mean() > 0.8
