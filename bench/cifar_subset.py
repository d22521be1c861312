"""A small CIFAR-10 folder cut from a full one, in the original pickle layout: a few MiB to copy to a machine that
cannot download the dataset (bench/make_gpu_carry.sh uses it for bench/gpu_check.sh's search).

    python -m bench.cifar_subset --data-dir /path/to/cifar10 --out bench_out/gpu_carry --train 5000 --test 1000

Train: the first train/5 images of each data_batch_i (the original order, so classes stay roughly balanced);
test: the first `test` images of test_batch. tuner.trial.data.load_arrays reads the result like any CIFAR-10 folder.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from tuner.errors import DataError
from tuner.trial.data import BATCHES_FOLDER, META_FILE, TEST_FILES, TRAIN_FILES, check_folder, find_folder


def _read(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _write(path: Path, entry: dict, keep: int) -> None:
    entry = dict(entry)
    entry["data"] = entry["data"][:keep]
    entry["labels"] = list(entry["labels"][:keep])
    if "filenames" in entry:
        entry["filenames"] = list(entry["filenames"][:keep])
    with open(path, "wb") as f:
        # protocol 4, not the original's 2: protocol 2 writes numpy's bytes as latin-1 text, much larger
        pickle.dump(entry, f, protocol=4)


def write_subset(data_dir: str | Path, out: str | Path, train: int, test: int) -> Path:
    """Write out/cifar-10-batches-py with `train` training images (train/5 per batch) and `test` test images;
    return that folder. Raises DataError naming the bad folder or count."""
    source = find_folder(data_dir)
    counts = check_folder(source)
    per_batch = train // len(TRAIN_FILES)
    if train < len(TRAIN_FILES) or train % len(TRAIN_FILES):
        raise DataError(f"--train {train}: must be a positive multiple of {len(TRAIN_FILES)} (one share per batch)")
    if any(counts[name] < per_batch for name in TRAIN_FILES) or not 1 <= test <= counts[TEST_FILES[0]]:
        raise DataError(f"{source}: holds {counts}; too few for --train {train} --test {test}")
    folder = Path(out) / BATCHES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_FILES:
        _write(folder / name, _read(source / name), per_batch)
    _write(folder / TEST_FILES[0], _read(source / TEST_FILES[0]), test)
    (folder / META_FILE).write_bytes((source / META_FILE).read_bytes())
    check_folder(folder)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cifar_subset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="a CIFAR-10 folder (holding cifar-10-batches-py)")
    parser.add_argument("--out", required=True, help="where cifar-10-batches-py/ is written")
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        folder = write_subset(args.data_dir, args.out, args.train, args.test)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{folder}: {args.train} train + {args.test} test images, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
