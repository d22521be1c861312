"""The record of each search on disk, so that an interrupted one can be found and resumed.

Each search is one Ray experiment folder `<storage>/<space>-<YYYYmmdd-HHMMSS>/`. Beside Ray's own state we keep
  - `search.json`: which space, its overrides, the MLflow parent run, and whether the search finished;
  - `.driver.lock`: held (flock) by the driver while it runs, so a search is never driven twice at once;
  - `resume_state/`: ASHA's rungs and `ray_state.pkl`, a whole copy of Ray's experiment state (see below).
Our state lives in a subfolder because Ray, on restore, copies the top-level .json/.pkl files of the experiment
folder to its staging area and from then on copies them back at every snapshot, over whatever we wrote since.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD = "search.json"
LOCK = ".driver.lock"
RESUME_DIR = "resume_state"
RAY_SNAPSHOT = "ray_state.pkl"
# Ray's experiment state: the trials, the searcher, the searcher's wrapper (how many trials it has suggested)
RAY_STATE_PREFIXES = ("experiment_state-", "searcher-state-", "search_gen_state-", "callback-states-")


@dataclass
class SearchRecord:
    name: str
    space: str                 # the space's name
    space_path: str
    overrides: dict            # the command-line overrides it was started with (reapplied on resume)
    mlflow_uri: str
    experiment: str            # MLflow experiment name
    parent_run_id: str = ""
    status: str = "running"    # running | interrupted | finished ("running" after a killed driver, too)
    created: float = field(default_factory=time.time)

    def save(self, folder: Path) -> None:
        """Atomically: a crash mid-write must not leave a half-written record."""
        atomic_write(Path(folder) / RECORD, json.dumps(asdict(self), indent=2).encode())

    @classmethod
    def load(cls, folder: Path) -> "SearchRecord":
        return cls(**json.loads((Path(folder) / RECORD).read_text()))


def atomic_write(path: Path, data: bytes) -> None:
    """Write, flush to disk, then rename over `path`: a reader (or a resumed search) sees the old or the new file,
    never a torn one, whatever moment the writer is killed at."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def resume_command(space_arg: str, folder: Path) -> str:
    return f"python -m tuner.run --space {space_arg} --resume {folder}"


def new_name(space: str) -> str:
    return f"{space}-{time.strftime('%Y%m%d-%H%M%S')}"


def unfinished(storage: Path, space: str) -> list[Path]:
    """Folders of this space's searches that did not finish, newest last."""
    if not storage.is_dir():
        return []
    found = []
    for record_file in storage.glob(f"*/{RECORD}"):
        try:
            record = SearchRecord.load(record_file.parent)
        except (ValueError, TypeError, OSError):
            continue
        if record.space == space and record.status != "finished":
            found.append((record.created, record_file.parent))
    return [folder for _, folder in sorted(found)]


# ------------------------------------------------------------------------------------------ one driver at a time


def claim(folder: Path):
    """Take the search's lock for the life of this process (the OS drops it when the process dies, SIGKILL
    included). Returns the open lock file, to be kept referenced, or None if another live driver holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def driver_pid(folder: Path) -> str | None:
    """The pid of the live driver of this search, or None when no process holds its lock."""
    if not (folder / LOCK).exists():
        return None
    with open(folder / LOCK) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "?"
    return None


# ------------------------------------------------------------------------------------ Ray's state, taken whole
# Ray (2.60) writes its experiment state to a staging folder at every controller step, then copies the files into
# the experiment folder one at a time, in a background thread, while the next step may already be rewriting them.
# Measured during a search: about 1 read in 12 of experiment_state-*.json in the experiment folder found it torn.
# A driver killed at such a moment leaves a state Ray cannot read, and Ray then silently starts the search over.
# So after each step in which something happened to a trial (search.py, SnapshotOnEvents) we copy the staging
# files, which are complete and consistent with each other at that point, into one file written atomically; a
# resumed search puts them back before Ray reads the folder.


def save_ray_snapshot(staging: Path, folder: Path) -> None:
    """Copy the newest session's state files from Ray's staging folder into `folder`/resume_state/ray_state.pkl."""
    states = sorted(staging.glob("experiment_state-*.json"))
    if not states:
        return
    session = states[-1].name[len("experiment_state-"):-len(".json")]
    files = {path.name: path.read_bytes() for path in staging.iterdir()
             if path.name.startswith(RAY_STATE_PREFIXES) and path.stem.endswith(f"-{session}")}
    atomic_write(folder / RESUME_DIR / RAY_SNAPSHOT, pickle.dumps(files))


def install_ray_snapshot(folder: Path) -> bool:
    """Make the last whole snapshot the only Ray state in `folder`. False when there is none (the driver died
    before any trial started): Ray's own files are then all there is."""
    path = folder / RESUME_DIR / RAY_SNAPSHOT
    if not path.exists():
        return False
    files = pickle.loads(path.read_bytes())
    for stale in folder.iterdir():  # other sessions' files, possibly newer and torn: Ray reads the newest
        if stale.name.startswith(RAY_STATE_PREFIXES) and stale.name not in files:
            stale.unlink()
    for name, data in files.items():
        atomic_write(folder / name, data)
    return True
