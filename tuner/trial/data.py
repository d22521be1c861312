"""CIFAR-10: found or downloaded, checked, split, held on the device, augmented there in batches.

Airbench style: each split is one uint8 tensor on the device and augmentation is a few batched tensor ops, so
there is no DataLoader, no worker processes and no host round trip per batch. Epoch k's shuffle and augmentation
come from a generator seeded by (seed, k) alone, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import functools
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.catalog import NUM_CLASSES
from tuner.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BATCHES_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
ALL_FILES = TRAIN_FILES + TEST_FILES + (META_FILE,)
IMAGE_SHAPE = (3, 32, 32)
HOW_TO_FIX = f"pass --data-dir DIR (a folder holding {BATCHES_FOLDER})"


# ----------------------------------------------------------------------------------------------------------------
# finding and checking the folder


def _check_batch(path: Path, entry) -> int:
    """Raise DataError naming `path` unless `entry` is a CIFAR-10 batch dict; return its number of images."""
    if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
        raise DataError(f"{path}: not a CIFAR-10 batch (expected a dict with 'data' and 'labels')")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' must be a uint8 array, got {getattr(data, 'dtype', type(data).__name__)}")
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] < 1:
        raise DataError(f"{path}: 'data' must have shape (N, 3072) with N >= 1, got {data.shape}")
    labels = np.asarray(entry["labels"])
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but 'labels' has shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: 'labels' must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}")
    return len(data)


@functools.lru_cache(maxsize=8)
def _check_files(folder: str, signature: tuple) -> tuple:
    # `signature` (names, sizes, mtimes) is only the cache key: a process that loads the same unchanged folder
    # again (a test, a bench) does not unpickle 186 MB once more to check it.
    counts = []
    for name in ALL_FILES:
        path = Path(folder) / name
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")  # the encoding torchvision reads with
        except Exception as e:
            raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
        if name == META_FILE:
            names = entry.get("label_names") if isinstance(entry, dict) else None
            if not isinstance(names, list) or len(names) != NUM_CLASSES:
                raise DataError(f"{path}: expected a dict with 'label_names', a list of {NUM_CLASSES} class names")
        else:
            counts.append((name, _check_batch(path, entry)))
    return tuple(counts)


def check_folder(folder: str | Path) -> dict[str, int]:
    """Structural check of a cifar-10-batches-py folder: the file set, each batch's keys, shapes and labels.

    Returns {file name: number of images}. Any number of images per batch is accepted (tests use tiny folders);
    md5 sums are not checked, as a faithful rebuild of CIFAR-10 need not be byte-identical to the original.
    """
    folder = Path(folder)
    for name in ALL_FILES:
        if not (folder / name).is_file():
            raise DataError(f"{folder / name}: missing; a CIFAR-10 folder holds {', '.join(ALL_FILES)}")
    signature = tuple((name, (folder / name).stat().st_size, (folder / name).stat().st_mtime_ns) for name in ALL_FILES)
    return dict(_check_files(str(folder.resolve()), signature))


def _read(folder: Path, files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 3, 32, 32) uint8 and labels (N,) int64 of checked batch files: a batch's 'data' holds each
    image as its three channel planes in a row, so a reshape is all it takes (torchvision is only needed to
    download)."""
    images, labels = [], []
    for name in files:
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        images.append(entry["data"])
        labels.extend(entry["labels"])
    return np.concatenate(images).reshape(-1, *IMAGE_SHAPE), np.asarray(labels, dtype=np.int64)


def find_folder(data_dir: str | Path) -> Path:
    """The cifar-10-batches-py folder `data_dir` names (it, or the folder holding it); DataError if neither."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir}: no such folder; {HOW_TO_FIX}")
    if (data_dir / BATCHES_FOLDER).is_dir():
        return data_dir / BATCHES_FOLDER
    if data_dir.name == BATCHES_FOLDER or any((data_dir / name).exists() for name in ALL_FILES):
        return data_dir  # the batches folder itself; check_folder names whatever is missing
    raise DataError(f"--data-dir {data_dir}: holds neither {BATCHES_FOLDER}/ nor its files; {HOW_TO_FIX}")


def load_arrays(data_dir: str | Path | None, download_root: str | Path = "./data") -> dict[str, np.ndarray]:
    """CIFAR-10 as numpy arrays: train_x (N,3,32,32) uint8, train_y (N,) int64, test_x, test_y.

    data_dir: the folder holding cifar-10-batches-py, or that folder itself. None: use download_root,
    downloading there with torchvision if it holds no copy yet.
    """
    if data_dir is None:
        download_root = Path(download_root).expanduser()
        if not (download_root / BATCHES_FOLDER).is_dir():
            try:
                from torchvision.datasets import CIFAR10

                CIFAR10(str(download_root), train=False, download=True)
            except Exception as e:
                raise DataError(
                    f"no CIFAR-10 in {download_root / BATCHES_FOLDER} and the download failed "
                    f"({type(e).__name__}: {e}); {HOW_TO_FIX}"
                ) from None
        data_dir = download_root
    folder = find_folder(data_dir)
    check_folder(folder)  # raises DataError naming the bad file
    try:
        (train_x, train_y), (test_x, test_y) = _read(folder, TRAIN_FILES), _read(folder, TEST_FILES)
    except Exception as e:  # changed since the check
        raise DataError(f"{folder}: could not be read ({type(e).__name__}: {e})") from None
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    log.info("CIFAR-10 from %s: %d train, %d test images", folder, len(arrays["train_y"]), len(arrays["test_y"]))
    return arrays


# ----------------------------------------------------------------------------------------------------------------
# splits


def _class_quotas(counts: np.ndarray, n: int) -> np.ndarray:
    """Split n across classes in proportion to `counts` (largest remainder), so balanced classes get equal ±1."""
    exact = counts * n / max(counts.sum(), 1)
    quotas = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(-(exact - quotas), kind="stable")
    quotas[by_remainder[: n - quotas.sum()]] += 1
    return quotas


def stratified_split(labels: np.ndarray, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep_idx, holdout_idx): disjoint, together all of range(len(labels)), the holdout class-balanced."""
    labels = np.asarray(labels)
    if not 0 <= holdout <= len(labels):
        raise DataError(f"cannot hold out {holdout} of {len(labels)} images")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    keep, held = [], []
    for c, quota in zip(classes, _class_quotas(counts, holdout)):
        members = rng.permutation(np.flatnonzero(labels == c))
        held.append(members[:quota])
        keep.append(members[quota:])
    empty = np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(keep or [empty])), np.sort(np.concatenate(held or [empty]))


def stratified_subset(idx: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n of the indices `idx`, class-balanced (labels are indexed by idx), seeded."""
    idx = np.asarray(idx)
    _, chosen = stratified_split(np.asarray(labels)[idx], n, seed)
    return idx[chosen]


# ----------------------------------------------------------------------------------------------------------------
# on the device


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x_uint8.float().div_(127.5).sub_(1.0)


def augment(x_uint8: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after `pad`-pixel zero padding, then a random horizontal flip; uint8 in, uint8 out, same shape.

    Both are one gather from the padded batch: per image a row offset and a column offset, the columns
    read backwards where the image is flipped. No Python loop over images.
    """
    n, channels, height, width = x_uint8.shape
    device = x_uint8.device
    padded = F.pad(x_uint8, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
    flip = torch.randint(0, 2, (n, 1), generator=generator, device=device).bool()
    rows = dy + torch.arange(height, device=device)  # (n, height)
    col = torch.arange(width, device=device)
    cols = dx + torch.where(flip, width - 1 - col, col)  # (n, width)
    image = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(channels, device=device)[None, :, None, None]
    return padded[image, channel, rows[:, None, :, None], cols[:, None, None, :]]


_crop_and_flip = augment  # Split.batches has a keyword named `augment`, which hides the function there


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) so that nearby pairs give unrelated streams; 63 bits suit any torch device
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]) >> 1


@dataclass
class Split:
    """One split held on a device: x uint8 (N,3,32,32), y int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def _drop_last(self, batch_size: int, train: bool, drop_last: bool | None) -> bool:
        # by default training drops a ragged last batch (a batch of 1 breaks batch norm), unless that drops all
        return (train and len(self) >= batch_size) if drop_last is None else drop_last

    def num_batches(self, batch_size: int, *, train: bool, drop_last: bool | None = None) -> int:
        if self._drop_last(batch_size, train, drop_last):
            return len(self) // batch_size
        return -(-len(self) // batch_size)

    def batches(
        self,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool | None = None,
        augment: bool = True,
    ):
        """Yield (x float32 in [-1, 1], y int64) on the split's device.

        train=True: shuffled and (if `augment`) cropped and flipped, a pure function of (seed, epoch).
        train=False: in order, unaugmented, the last partial batch kept (unless drop_last=True).
        """
        n = len(self)
        stop = n - n % batch_size if self._drop_last(batch_size, train, drop_last) else n
        if train:
            generator = torch.Generator(device=self.x.device)
            generator.manual_seed(_epoch_seed(seed, epoch))
            order = torch.randperm(n, generator=generator, device=self.x.device)
        for start in range(0, stop, batch_size):
            if train:
                idx = order[start : start + batch_size]
                x, y = self.x[idx], self.y[idx]
                if augment:
                    x = _crop_and_flip(x, generator)
            else:
                x, y = self.x[start : start + batch_size], self.y[start : start + batch_size]
            yield normalise(x), y


@dataclass
class CifarData:
    train: Split
    val: Split
    test: Split


def _to_split(x: np.ndarray, y: np.ndarray, device) -> Split:
    # arrays from Ray's object store are read-only views; torch wants memory it may write
    x = np.ascontiguousarray(x) if x.flags.writeable else np.array(x)
    return Split(torch.from_numpy(x).to(device), torch.from_numpy(np.array(y, dtype=np.int64)).to(device))


def make_splits(arrays: dict, *, val_size: int, train_subset: int | None, seed: int, device) -> CifarData:
    """Validation carved from the training images (stratified, seeded), the training subset (stratified, seeded)
    taken from what remains, and the test set as it is; all moved to `device`."""
    n_train = len(arrays["train_y"])
    wanted = val_size + (train_subset or 0)
    if val_size < 0 or val_size >= n_train or wanted > n_train:
        subset = f" + train_subset {train_subset}" if train_subset else ""
        raise ConfigError(
            f"val_size {val_size}{subset} does not fit the {n_train} training images "
            f"(at least one must remain for training)"
        )
    keep, val = stratified_split(arrays["train_y"], val_size, seed)
    if train_subset is not None:
        keep = stratified_subset(keep, arrays["train_y"], train_subset, seed + 1)
    return CifarData(
        train=_to_split(arrays["train_x"][keep], arrays["train_y"][keep], device),
        val=_to_split(arrays["train_x"][val], arrays["train_y"][val], device),
        test=_to_split(arrays["test_x"], arrays["test_y"], device),
    )
