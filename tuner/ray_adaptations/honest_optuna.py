"""Ray's OptunaSearch, made honest about how trials ended.

Out of the box (Ray 2.60) OptunaSearch:
  - reports intermediate values with `step = training_iteration`, and only for results the scheduler let
    continue: Tune skips `searcher.on_trial_result` for the result that made ASHA stop a trial (including the
    max_t one), so the epoch a trial was stopped at never reaches Optuna;
  - tells Optuna COMPLETE with the last value for any trial that has one, so an ASHA-stopped trial looks like a
    finished run with a low-fidelity score and misleads TPE;
  - passes a NaN value straight to `study.tell`, which raises; Ray logs a warning and the Optuna trial stays
    RUNNING forever.
Here: every finite epoch value is reported at `step = epoch`; completed -> COMPLETE(value), stopped -> PRUNED
(Optuna takes the last intermediate value, and TPE ranks pruned trials by how far they got), diverged or
failed -> FAIL (ignored by TPE). NaN never reaches `tell`.

Restore. Tune restores a searcher by unpickling the object it saved (Tuner.restore rebuilds it from tuner.pkl, then
`restore_from_dir` loads the last snapshot of its __dict__); no public hook builds it afresh. The pickle stays, for
what exists only in it: Ray's trial id -> Optuna trial map, the sampler's random state and the define-by-run space.
Everything Optuna knows about the trials is read back from the study's storage (tuner/search/optuna_storage.py), which
is newer than any snapshot: see `_reopen_study`.
"""

from __future__ import annotations

import optuna
from ray import cloudpickle
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from tuner.outcome import finite_number, trial_outcome


class HonestOptunaSearch(OptunaSearch):
    """OptunaSearch with a single (str) metric whose results carry `epoch`, `finished` and `diverged`."""

    # OptunaSearch's study, set up before any trial; Ray leaves it unannotated (`= None`), which mypy takes as its type
    _ot_study: optuna.Study  # type: ignore[assignment]

    def __init__(self, *args, config_of=None, **kwargs):
        super().__init__(*args, **kwargs)
        # Optuna's parameters -> the config a trial gets, where the two name things differently (None: the same)
        self._config_of = config_of
        # trial id -> highest epoch reported to Optuna; saved with the rest of __dict__, so a redone epoch
        # after a restore is not reported twice (Optuna would ignore it, with a warning)
        self._reported_epoch: dict[str, int] = {}

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def _report_epoch(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        epoch = result.get("epoch", result.get("training_iteration"))
        if not finite_number(value) or epoch is None or epoch <= self._reported_epoch.get(trial_id, 0):
            return
        self._ot_trials[trial_id].report(float(value), int(epoch))
        self._reported_epoch[trial_id] = int(epoch)

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        config_of = getattr(self, "_config_of", None)  # absent from a searcher pickled before it existed
        return config_of(config) if config_of and config is not None else config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._report_epoch(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        if result:
            self._report_epoch(trial_id, result)  # the stopping epoch, which Tune did not pass to on_trial_result
        outcome = trial_outcome(result, error)
        value = (result or {}).get(self.metric)
        if outcome == "completed" and finite_number(value):
            self._ot_study.tell(ot_trial, float(value), state=optuna.trial.TrialState.COMPLETE)
        elif outcome == "stopped" and trial_id in self._reported_epoch:
            self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.PRUNED)
        else:
            # diverged, failed, or stopped before reporting anything (e.g. still pending when the search ended):
            # there is no honest value, and a FAIL trial is one TPE leaves out
            self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if self._storage is not None:
            self._reopen_study(self._storage)

    def _reopen_study(self, storage: optuna.storages.BaseStorage) -> None:
        """Make the storage the record of every trial. The pickle is older than the storage (and its study's cache
        older still): reopen the study from the storage, point Ray's trials at it, and take from it what happened
        after the snapshot -- a trial told its end is done, an epoch reported is not reported again, and a trial
        asked for that belongs to no Ray trial (the driver killed before Ray recorded it) never ran: FAIL, and the
        point to evaluate it took, if any, is queued again. Trials still WAITING are the points to evaluate not yet
        given out; the next suggestions take them."""
        old = self._ot_study
        study = optuna.load_study(study_name=old.study_name, storage=storage, sampler=old.sampler, pruner=old.pruner)
        stored = {t._trial_id: t for t in study.get_trials(deepcopy=False)}
        for trial_id, ot_trial in list(self._ot_trials.items()):
            frozen = stored[ot_trial._trial_id]
            self._ot_trials[trial_id] = optuna.Trial(study, frozen._trial_id)
            if frozen.intermediate_values:
                self._reported_epoch[trial_id] = max(frozen.intermediate_values)
            if frozen.state.is_finished():
                self._completed_trials.add(trial_id)
        known = {t._trial_id for t in self._ot_trials.values()}
        for frozen in stored.values():
            if frozen.state == optuna.trial.TrialState.RUNNING and frozen._trial_id not in known:
                study.tell(frozen.number, None, state=optuna.trial.TrialState.FAIL)
                if frozen.system_attrs.get("fixed_params"):  # a point to evaluate it took runs later instead
                    study.enqueue_trial(frozen.system_attrs["fixed_params"])
        self._ot_study = study

    def save(self, checkpoint_path: str) -> None:
        # Ray's save uses the stdlib pickle, which cannot pickle a define-by-run closure or lambda; cloudpickle
        # can, and the inherited restore() (pickle.load) reads what it writes.
        with open(checkpoint_path, "wb") as f:
            cloudpickle.dump(self.__dict__.copy(), f)


def make_searcher(
    define_by_run,
    sampler,
    metric: str,
    mode: str,
    points_to_evaluate: list[dict] | None = None,
    max_concurrent: int | None = None,
    storage=None,
    study_name: str | None = None,
    config_of=None,
) -> Searcher:
    """HonestOptunaSearch over `define_by_run(trial)`, wrapped in a ConcurrencyLimiter when max_concurrent is set.
    storage/study_name: an Optuna storage to keep the study in (tuner/search/optuna_storage.py); None keeps it in
    memory.
    config_of: Optuna's parameters -> a trial's config (points_to_evaluate are in Optuna's names)."""
    searcher = HonestOptunaSearch(
        space=define_by_run,
        metric=metric,
        mode=mode,
        sampler=sampler,
        points_to_evaluate=points_to_evaluate or None,
        storage=storage,
        study_name=study_name,
        config_of=config_of,
    )
    if max_concurrent:
        return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    return searcher
