"""The Ray behaviours tuner/ray_adaptations works around are still there in the installed Ray.

Each test pins one behaviour listed in tuner/ray_adaptations/__init__.py. When an upgrade fixes or changes it, the
test fails: then drop or rework the adaptation (and the version bound in pyproject.toml) instead of letting it
silently do the wrong thing. Where a behaviour can only be seen in Ray's source (a hard-coded wait, what a method
saves), the test reads that source; everything else is exercised.
"""

import importlib
import inspect
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import ray
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
from ray.tune.execution.tune_controller import TuneController
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from tuner.ray_adaptations.asha import STATE_FILE, PersistentASHA
from tuner.ray_adaptations.environment import QUIET_ENV, STATE_EVERY_STEP
from tuner.ray_adaptations.interrupts import StopTrialsAtOnce
from tuner.ray_adaptations.notices import INTERRUPT_NOTICES
from tuner.ray_adaptations.snapshots import RESUME_DIR

RAY = Path(ray.__file__).parent
COMPLETE, RUNNING = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING


def source(path: str) -> str:
    return (RAY / path).read_text()


def test_ray_minor_is_the_one_these_tests_cover():
    # the adaptations read private attributes of this minor; pyproject.toml bounds Ray to it
    assert ray.__version__.startswith("2.60."), ray.__version__


# -------------------------------------------------------------------------------------------- 1. ASHA's state


def test_tune_saves_the_searcher_and_callbacks_but_not_the_scheduler():
    saved = inspect.getsource(TuneController.save_to_dir)
    assert "_search_alg.save_to_dir" in saved and "_callbacks.save_to_dir" in saved
    assert "scheduler" not in saved


def fake_trial(trial_id: str, folder: Path):
    return SimpleNamespace(trial_id=trial_id, storage=SimpleNamespace(experiment_fs_path=str(folder)))


def new_asha() -> PersistentASHA:
    return PersistentASHA(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2, metric="val_acc", mode="max")


def test_asha_state_survives_save_and_restore(tmp_path):
    # ASHA's private layout we read (rungs()) is what this Ray has
    asha = new_asha()
    (bracket,) = asha._brackets
    assert [milestone for milestone, recorded in bracket._rungs] == [4, 2, 1] and isinstance(asha._trial_info, dict)

    trials = [fake_trial(name, tmp_path) for name in ("good", "bad", "late")]
    for trial in trials[:2]:
        asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, trials[0], {"epoch": 1, "val_acc": 0.9}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, trials[1], {"epoch": 1, "val_acc": 0.1}) == TrialScheduler.STOP
    assert (tmp_path / RESUME_DIR / STATE_FILE).exists()

    resumed = new_asha()  # as Tuner.restore builds it: empty
    assert resumed.rungs() == [(1, {}), (2, {}), (4, {})]
    resumed.on_trial_add(None, trials[0])
    assert resumed.rungs() == [(1, {"good": 0.9, "bad": 0.1}), (2, {}), (4, {})] and resumed.stopped == {"bad"}
    assert resumed.on_trial_result(None, trials[1], {"epoch": 1, "val_acc": 0.95}) == TrialScheduler.STOP
    resumed.on_trial_add(None, trials[2])  # judged against the rungs from before the interruption
    assert resumed.on_trial_result(None, trials[2], {"epoch": 1, "val_acc": 0.05}) == TrialScheduler.STOP


def test_a_plain_asha_restored_by_tune_starts_empty():
    """What PersistentASHA answers: without its own restore, the state is what the constructor made."""
    asha = AsyncHyperBandScheduler(
        time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2, metric="val_acc", mode="max", brackets=1
    )
    assert all(not recorded for milestone, recorded in asha._brackets[0]._rungs)


# ------------------------------------------------------------------------------------------ 2. honest Optuna


def lr_space(trial):
    trial.suggest_float("lr", 1e-4, 1, log=True)


def plain_optuna() -> OptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return OptunaSearch(space=lr_space, metric="val_acc", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))


def test_optuna_search_calls_a_stopped_trial_complete():
    searcher = plain_optuna()
    searcher.suggest("stopped")
    searcher.on_trial_result("stopped", {"val_acc": 0.3, "training_iteration": 7, "epoch": 1})
    # ASHA stopped it after epoch 1: nothing in the result Tune passes on says so
    searcher.on_trial_complete("stopped", {"val_acc": 0.3, "training_iteration": 7, "epoch": 1, "done": True})
    (trial,) = searcher._ot_study.trials
    assert trial.state == COMPLETE and trial.value == 0.3
    assert trial.intermediate_values == {7: 0.3}  # step = training_iteration, not the epoch


def test_optuna_search_leaves_a_nan_trial_running():
    searcher = plain_optuna()
    searcher.suggest("diverged")
    searcher.on_trial_complete("diverged", {"val_acc": math.nan, "training_iteration": 1})
    (trial,) = searcher._ot_study.trials
    assert trial.state == RUNNING


def test_tune_hides_the_stopping_result_from_the_searcher():
    processing = inspect.getsource(TuneController._process_trial_result)
    stop = processing.index("if decision == TrialScheduler.STOP:")
    otherwise = processing.index("else:", stop)
    assert processing.index("self._search_alg.on_trial_result", otherwise) > otherwise


def test_optuna_search_cannot_save_a_closure(tmp_path):
    prefix = "lr"

    def closure(trial):
        trial.suggest_float(prefix, 1e-4, 1, log=True)

    searcher = OptunaSearch(space=closure, metric="val_acc", mode="max")
    with pytest.raises(Exception, match=r"(?i)pickle"):
        searcher.save(str(tmp_path / "searcher.pkl"))


def test_the_optuna_search_internals_we_read_exist():
    searcher = plain_optuna()
    searcher.suggest("a")
    assert isinstance(searcher._ot_trials["a"], optuna.Trial)
    assert isinstance(searcher._ot_study, optuna.Study) and searcher._completed_trials == set()


# ------------------------------------------------------------------------------------ 3. Ray's experiment state


def test_experiment_state_is_copied_in_the_background_in_place():
    from ray.train._internal.storage import _FilesystemSyncer, _upload_to_fs_path
    from ray.train._internal.syncer import _BackgroundSyncer

    assert issubclass(_FilesystemSyncer, _BackgroundSyncer)  # a thread, while the next step goes on
    assert "threading.Thread" in source("train/_internal/syncer.py")
    upload = inspect.getsource(_upload_to_fs_path)
    assert "_pyarrow_fs_copy_files" in upload and "rename" not in upload and "replace" not in upload


def test_experiment_state_is_written_every_10_s_by_default():
    assert 'os.getenv("TUNE_GLOBAL_CHECKPOINT_S", "auto")' in inspect.getsource(TuneController.__init__)
    assert _ExperimentCheckpointManager(storage=None, checkpoint_period="auto")._checkpoint_period == 10.0
    every_step = _ExperimentCheckpointManager(
        storage=None, checkpoint_period=STATE_EVERY_STEP["TUNE_GLOBAL_CHECKPOINT_S"]
    )
    assert every_step._checkpoint_period == 0


# --------------------------------------------------------------------------------------------- 4. Ctrl-C


def test_ray_workers_take_sigint_and_tune_waits_10_s():
    assert "SIGINT" not in source("_private/workers/default_worker.py")  # Python's default: KeyboardInterrupt
    assert "worker_process_setup_hook" in source("_private/workers/default_worker.py")
    init = inspect.getsource(TuneController.__init__)
    assert "self._actor_force_cleanup_timeout: int = 10" in init
    cleanup = inspect.getsource(TuneController._cleanup_trials)
    assert "self._schedule_trial_stop(trial)" in cleanup and "< 5" in cleanup
    assert "self._remove_actor(tracked_actor=tracked_actor)" in inspect.getsource(TuneController._schedule_trial_stop)
    remove = inspect.signature(TuneController._remove_actor)
    assert list(remove.parameters) == ["self", "tracked_actor"]
    # tune.run builds the controller by this module-level name (interrupts.stop_trials_at_once replaces it)
    tune_module = importlib.import_module("ray.tune.tune")
    assert "runner = TuneController(" in inspect.getsource(tune_module.run)
    assert issubclass(StopTrialsAtOnce, tune_module.TuneController)
    assert "set_sigterm_handler(sigterm_handler)" in source("_private/worker.py")  # ray.init replaces ours


WORKER_SIGINT_CHECK = """
import signal, ray
from tuner.search.ray_cluster import init_ray

@ray.remote(num_cpus=0)
def handler():
    return str(signal.getsignal(signal.SIGINT))

init_ray(num_cpus=1)
try:
    print("worker:", ray.get(handler.remote(), timeout=120))
finally:
    ray.shutdown()
print("driver:", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


@pytest.mark.slow
def test_workers_started_by_init_ray_ignore_sigint():
    # a process of its own: a Ray instance that earlier tests started and stopped in this one can keep the next
    # local start from coming up
    done = subprocess.run(
        [sys.executable, "-c", WORKER_SIGINT_CHECK],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert f"worker: {signal.SIG_IGN}" in lines  # the worker ignores the terminal's Ctrl-C
    assert "driver: True" in lines  # the driver's own handler is untouched


# -------------------------------------------------------------------------------------------- 5./6. notices


def test_the_notices_we_replace_are_still_printed_by_ray():
    printed = source("tune/tune.py") + source("tune/analysis/experiment_analysis.py")
    for notice in INTERRUPT_NOTICES:
        assert notice in printed, notice
    assert 'os.environ.get("TUNE_PRINT_ALL_TRIAL_ERRORS", "1")' in source("tune/execution/tune_controller.py")


def test_the_settings_we_pass_are_read_by_ray():
    from ray.tune.constants import TUNE_ENV_VARS

    read = TUNE_ENV_VARS | {
        "RAY_USAGE_STATS_ENABLED",
        "RAY_AIR_NEW_OUTPUT",
        "RAY_DEDUP_LOGS",
        "RAY_DEDUP_LOGS_ALLOW_REGEX",
        "RAY_TRAIN_V2_ENABLED",
    }
    ours = {key for key in {**QUIET_ENV, **STATE_EVERY_STEP} if key.startswith(("RAY_", "TUNE_"))}
    assert ours <= read, ours - read
    assert os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "0") == "0"


@pytest.mark.parametrize("quiet", [True, False])
def test_a_worker_drops_the_system_exit_ray_raises_at_shutdown_and_reports_the_rest(quiet):
    # Ray ends a worker with SystemExit wherever it is; inside a weakref callback Python reports it as ignored
    script = f"""
import weakref
from tuner.ray_adaptations.interrupts import quiet_exit_at_shutdown
if {quiet}:
    quiet_exit_at_shutdown()
class Thing: pass
def raise_(error):
    def callback(_):
        raise error
    return callback
a, b = Thing(), Thing()
refs = [weakref.ref(a, raise_(SystemExit(0))), weakref.ref(b, raise_(ValueError("a real error")))]
del a, b
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "ValueError: a real error" in result.stderr
    assert ("SystemExit" in result.stderr) is not quiet
