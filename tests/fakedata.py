"""Generated stand-ins for CIFAR-10: arrays in load_arrays' format, and folders in the original pickle layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

# one colour per class, far apart in RGB so that noise, crops and flips leave the class readable
PALETTE = np.array(
    [
        [230, 40, 40],
        [40, 230, 40],
        [40, 40, 230],
        [230, 230, 40],
        [230, 40, 230],
        [40, 230, 230],
        [130, 130, 130],
        [240, 140, 40],
        [40, 140, 240],
        [140, 40, 240],
    ],
    dtype=np.float32,
)


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    base = PALETTE[labels][:, :, None, None]  # (n, 3, 1, 1)
    brightness = rng.uniform(-25, 25, size=(len(labels), 1, 1, 1))  # per-image, so the task is not trivial
    noise = rng.normal(0, 40, size=(len(labels), 3, 32, 32))
    return np.clip(base + brightness + noise, 0, 255).astype(np.uint8)


def learnable_arrays(n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A 10-class task in load_arrays' format (class = colour + noise) that a small CNN learns in seconds."""
    rng = np.random.default_rng(seed)
    train_y = rng.permutation(np.arange(n_train) % 10).astype(np.int64)  # balanced classes
    test_y = rng.permutation(np.arange(n_test) % 10).astype(np.int64)
    return {"train_x": _images(train_y, rng), "train_y": train_y, "test_x": _images(test_y, rng), "test_y": test_y}


def _write_batch(path: Path, x: np.ndarray, y: np.ndarray, label: str) -> None:
    entry = {
        "batch_label": label,
        "labels": [int(v) for v in y],
        "data": np.ascontiguousarray(x.reshape(len(x), -1)),
        "filenames": [f"fake_{label.replace(' ', '_')}_{i:05d}.png" for i in range(len(x))],
    }
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar_folder(root, arrays: dict, *, per_batch: int | None = None) -> Path:
    """Write root/cifar-10-batches-py in the original layout (protocol-2 pickles; md5s will not match
    torchvision's, which is the point) and return that folder.

    per_batch: images per data_batch_i, taken from the start of train; None splits all of train into 5."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = arrays["train_x"], arrays["train_y"]
    if per_batch is not None:
        x, y = x[: 5 * per_batch], y[: 5 * per_batch]
    for i, (xb, yb) in enumerate(zip(np.array_split(x, 5), np.array_split(y, 5)), start=1):
        _write_batch(folder / f"data_batch_{i}", xb, yb, f"training batch {i} of 5")
    _write_batch(folder / "test_batch", arrays["test_x"], arrays["test_y"], "testing batch 1 of 1")
    meta = {
        "num_cases_per_batch": len(x) // 5,
        "num_vis": 3072,
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    }
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


def _gratings(labels: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Class k: a grating at angle k*180/classes degrees over the image (its random phase is its position), with
    random colour, contrast, frequency and phase, on a random flat background plus noise. Every image's mean colour
    is drawn independently of its class, so only the spatial structure tells the classes apart."""
    n = len(labels)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    angle = labels * np.pi / classes + rng.normal(0, 0.05, n)
    freq = rng.uniform(0.2, 0.35, n) * 2 * np.pi
    phase = rng.uniform(0, 2 * np.pi, n)
    wave = np.sin(
        freq[:, None, None] * (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy)
        + phase[:, None, None]
    )  # (n, 16, 16)
    colour = rng.uniform(-1, 1, (n, 3)) * rng.uniform(50, 90, (n, 1))  # signed per-channel contrast
    images = rng.uniform(60, 190, (n, 3, 1, 1)) + rng.normal(0, 20, (n, 3, 32, 32))
    images += colour[:, :, None, None] * wave[:, None]
    return np.clip(images, 0, 255).astype(np.uint8)


def structured_arrays(n_train: int, n_test: int, seed: int = 0, classes: int = 4) -> dict[str, np.ndarray]:
    """A task in load_arrays' format whose class is spatial structure alone (oriented gratings, see _gratings):
    a network whose convolutions do not learn cannot solve it from colour or brightness. Labels 0..classes-1."""
    rng = np.random.default_rng(seed)
    train_y = rng.permutation(np.arange(n_train) % classes).astype(np.int64)
    test_y = rng.permutation(np.arange(n_test) % classes).astype(np.int64)
    return {
        "train_x": _gratings(train_y, classes, rng),
        "train_y": train_y,
        "test_x": _gratings(test_y, classes, rng),
        "test_y": test_y,
    }
