"""ASHA whose state survives an interrupted search.

Ray saves the searcher and the callbacks with the experiment, but not the scheduler: after `Tuner.restore` ASHA
starts with empty rungs and judges the resumed trials against nothing. Here ASHA's own `save` (its whole state)
writes `resume_state/asha_state.pkl` after every decision, and its own `restore` reads it back on the first trial
of a restored search. A redone epoch finds its value already recorded (and a trial stopped just before the
interruption is stopped again at once), so ASHA decides as it would have without the interruption.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from tuner.files import atomic_save
from tuner.ray_adaptations.snapshots import RESUME_DIR

STATE_FILE = "asha_state.pkl"


class PersistentASHA(AsyncHyperBandScheduler):
    def __init__(self, **kwargs):
        super().__init__(brackets=1, stop_last_trials=False, **kwargs)
        self.state_path: Path | None = None  # found from the first trial: wherever the search folder is now
        self.stopped: set[str] = set()  # ASHA counts the trials it stopped; resuming needs to know which
        self._loaded = False

    def _load(self, folder: Path) -> None:
        state_path = folder / RESUME_DIR / STATE_FILE
        if state_path.exists():
            self.restore(str(state_path))
        self.state_path, self._loaded = state_path, True  # the folder may have moved since the state was saved

    def _save(self) -> None:
        assert self.state_path is not None, "saved only after a trial was added, which loads the state"
        atomic_save(self.state_path, lambda tmp: self.save(str(tmp)))

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
        state["_loaded"] = False  # a restored copy (from tuner.pkl) must read the state from disk
        return state

    def rungs(self) -> list[tuple[float, dict]]:
        """(milestone, {trial id: value recorded there}) for each rung, lowest first."""
        (bracket,) = self._brackets
        return sorted((milestone, dict(recorded)) for milestone, recorded in bracket._rungs)


def make_trial_scheduler(space) -> TrialScheduler:
    sched = space.scheduler
    if sched.type != "asha":
        return FIFOScheduler()
    return PersistentASHA(
        time_attr="epoch", max_t=sched.max_t, grace_period=sched.grace_period, reduction_factor=sched.reduction_factor
    )
