"""Ray's experiment state, taken whole after each trial event, and put back before a resumed search reads it.

Ray writes its experiment state to a staging folder at every controller step, then copies the files into the
experiment folder one at a time, in a background thread, while the next step may already be rewriting them.
Measured during a search: about 1 read in 12 of experiment_state-*.json in the experiment folder found it torn.
A driver killed at such a moment leaves a state Ray cannot read, and Ray then silently starts the search over.
So after each step in which something happened to a trial (SnapshotOnEvents) we copy the staging files, which are
complete and consistent with each other at that point, into one file written atomically; a resumed search puts
them back (install_ray_snapshot) before Ray reads the folder.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from ray.tune import Callback

from tuner.files import atomic_write

RESUME_DIR = "resume_state"  # in a search folder: ASHA's state and Ray's snapshot (tuner/search/folder.py)


RAY_SNAPSHOT = "ray_state.pkl"
# Ray's experiment state: the trials, the searcher, the searcher's wrapper (how many trials it has suggested)
RAY_STATE_PREFIXES = ("experiment_state-", "searcher-state-", "search_gen_state-", "callback-states-")


def save_ray_snapshot(staging: Path, folder: Path) -> None:
    """Copy the newest session's state files from Ray's staging folder into `folder`/resume_state/ray_state.pkl."""
    states = sorted(staging.glob("experiment_state-*.json"))
    if not states:
        return
    session = states[-1].name[len("experiment_state-") : -len(".json")]
    files = {
        path.name: path.read_bytes()
        for path in staging.iterdir()
        if path.name.startswith(RAY_STATE_PREFIXES) and path.stem.endswith(f"-{session}")
    }
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


class SnapshotOnEvents(Callback):
    """After each controller step in which something happened to a trial, copy Ray's experiment state whole.
    STATE_EVERY_STEP (environment.py) makes Ray write that state at every step, so the copy is never behind the
    last event."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self._dirty = True
        self._num_trials = 0
        self._copied: tuple[Path, int] | None = None  # (path, mtime) of the staging state last copied

    def __getstate__(self) -> dict:
        return {}  # pickled into tuner.pkl: a restored search starts afresh

    def __setstate__(self, state: dict) -> None:
        self._reset()

    def _touch(self, *args, **info) -> None:
        self._dirty = True

    on_trial_start = on_trial_result = on_trial_complete = on_trial_error = on_trial_recover = _touch
    on_trial_save = on_checkpoint = _touch

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if not trials or (not self._dirty and len(trials) == self._num_trials):
            return
        storage = trials[0].storage
        staging = Path(storage.experiment_driver_staging_path)
        states = sorted(staging.glob("experiment_state-*.json"))
        if not states:
            return
        written = (states[-1], states[-1].stat().st_mtime_ns)
        if written == self._copied:
            return  # Ray has not written its state since the last copy; try again after the next step
        save_ray_snapshot(staging, Path(storage.experiment_fs_path))
        self._dirty, self._num_trials, self._copied = False, len(trials), written
