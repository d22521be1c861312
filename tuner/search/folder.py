"""The record of each search on disk, so that an interrupted one can be found and resumed.

Each search is one Ray experiment folder `<storage>/<space>-<YYYYmmdd-HHMMSS>/`. Beside Ray's own state we keep
  - `search.json`: the settings it was started with, the MLflow parent run, and whether the search finished;
  - `.driver.lock`: held (flock) by the driver while it runs, so a search is never driven twice at once;
  - `resume_state/`: ASHA's state and `ray_state.pkl`, a whole copy of Ray's experiment state
    (tuner/ray_adaptations says why each is needed).
Our state lives in a subfolder because Ray, on restore, copies the top-level .json/.pkl files of the experiment
folder to its staging area and from then on copies them back at every snapshot, over whatever we wrote since.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuner.config.settings import SearchSettings
from tuner.errors import SetupError  # noqa: F401  (raised by callers of this module's checks)
from tuner.files import atomic_write

RECORD = "search.json"
LOCK = ".driver.lock"


@dataclass
class SearchRecord:
    name: str
    space: str  # the space's name
    space_path: str
    settings: SearchSettings  # what it was started with; a resumed search keeps them (but for --address)
    experiment: str  # MLflow experiment name
    parent_run_id: str = ""
    status: str = "running"  # running | interrupted | finished ("running" after a killed driver, too)
    created: float = field(default_factory=time.time)

    def save(self, folder: Path) -> None:
        """Atomically: a crash mid-write must not leave a half-written record."""
        atomic_write(Path(folder) / RECORD, json.dumps(asdict(self), indent=2).encode())

    @property
    def mlflow_uri(self) -> str:
        return self.settings.mlflow_uri

    @classmethod
    def load(cls, folder: Path) -> SearchRecord:
        saved = json.loads((Path(folder) / RECORD).read_text())
        return cls(**{**saved, "settings": SearchSettings(**saved["settings"])})


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
        except (ValueError, TypeError, KeyError, OSError):  # not a search's record, or one of an older layout
            continue
        if record.space == space and record.status != "finished":
            found.append((record.created, record_file.parent))
    return [folder for _, folder in sorted(found)]


# ------------------------------------------------------------------------------------------ one driver at a time


def claim(folder: Path):
    """Take the search's lock for the life of this process (the OS drops it when the process dies, SIGKILL
    included). Returns the open lock file, to be kept referenced, or None if another live driver holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK, "a+")  # noqa: SIM115  (the lock lasts as long as the file stays open)
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
