"""What Ray prints about an interruption or a crashed trial, replaced by the lines that apply to this tool."""

from __future__ import annotations

import logging
from pathlib import Path

from ray.tune import Callback

from tuner.errors import error_line
from tuner.outcome import trial_error_text

# the loggers Tune writes its notices on an interrupted search to
INTERRUPT_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")
# how those notices begin: they point at Tuner.restore() and list the trials in flight as if they had failed, and
# a trial that never started has no metrics to fetch; the search prints what applies here instead
INTERRUPT_NOTICES = ("Experiment has been interrupted", "Trials did not complete", "Failed to fetch metrics")


class RayInterruptNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(INTERRUPT_NOTICES)


def hide_interrupt_notices() -> None:
    for name in INTERRUPT_LOGGERS:
        logging.getLogger(name).addFilter(RayInterruptNotices())


class FailureNotices(Callback):
    """One line on the console for a trial that crashed, in place of Ray's traceback (TUNE_PRINT_ALL_TRIAL_ERRORS=0
    in environment.py): what it raised, and where the whole traceback is (also in MLflow, as the run's error.txt)."""

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        print(
            f"trial {trial.trial_id} crashed ({error_line(trial_error_text(trial))}); retrying from its last "
            f"checkpoint",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        # the copy in the search's folder: the one beside Ray's session files goes with them
        kept = Path(trial.storage.trial_fs_path) / Path(trial.error_file or "error.txt").name
        print(
            f"trial {trial.trial_id} failed ({error_line(trial_error_text(trial))}); traceback in {kept} and in "
            f"MLflow (error.txt)",
            flush=True,
        )
