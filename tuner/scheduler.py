"""ASHA whose rungs survive an interrupted search.

Ray 2.60 saves the searcher and the callbacks with the experiment, but not the scheduler: after
`Tuner.restore` ASHA starts with empty rungs and judges the resumed trials against nothing. Here the rungs (and
which trials ASHA already stopped) are written to `resume_state/asha_state.json` after every decision and read back
on the first trial of a restored search. A redone epoch finds its value already recorded (and a trial stopped just
before the interruption is stopped again at once), so ASHA decides as it would have without the interruption.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from tuner.searches import RESUME_DIR, atomic_write

STATE_FILE = "asha_state.json"


class PersistentASHA(AsyncHyperBandScheduler):
    def __init__(self, **kwargs):
        super().__init__(brackets=1, stop_last_trials=False, **kwargs)
        self.state_path: Path | None = None  # found from the first trial: wherever the search folder is now
        self.stopped: set[str] = set()
        self._loaded = False

    def _load(self, folder: Path) -> None:
        self._loaded = True
        self.state_path = folder / RESUME_DIR / STATE_FILE
        if not self.state_path.exists():
            return
        state = json.loads(self.state_path.read_text())
        for (milestone, recorded), saved in zip(self._brackets[0]._rungs, state["rungs"]):
            assert milestone == saved["milestone"], "asha_state.json belongs to a different schedule"
            recorded.clear()
            recorded.update(saved["recorded"])
        self.stopped = set(state["stopped"])
        self._num_stopped = len(self.stopped)

    def _save(self) -> None:
        rungs = [{"milestone": milestone, "recorded": recorded} for milestone, recorded in self._brackets[0]._rungs]
        atomic_write(self.state_path, json.dumps({"rungs": rungs, "stopped": sorted(self.stopped)}).encode())

    def on_trial_add(self, tune_controller, trial):
        if not self._loaded:
            self._load(Path(trial.storage.experiment_fs_path))
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        if trial.trial_id in self.stopped:
            return TrialScheduler.STOP  # decided before an interruption; the trial was resumed regardless
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            self.stopped.add(trial.trial_id)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        if trial.trial_id not in self._trial_info:
            return  # already judged before an interruption
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_loaded"] = False  # a restored copy (from tuner.pkl) must read the rungs from disk
        return state


def make_scheduler(space) -> TrialScheduler:
    sched = space.scheduler
    if sched.type != "asha":
        return FIFOScheduler()
    return PersistentASHA(time_attr="epoch", max_t=sched.max_t,
                          grace_period=sched.grace_period, reduction_factor=sched.reduction_factor)
