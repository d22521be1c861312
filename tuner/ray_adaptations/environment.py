"""The environment Ray must start with. It is read when Ray starts, and Ray's workers inherit it."""

from __future__ import annotations

import logging
import os
import warnings

# Resume depends on this one. Ray writes its experiment state at most every ~10 s by default ("auto"); a driver
# killed in between would lose every trial event since. At 0 Ray writes it at every controller step, and the
# snapshot taken after each event (snapshots.py) is never behind it.
STATE_EVERY_STEP = {"TUNE_GLOBAL_CHECKPOINT_S": "0"}

# ray.init(runtime_env=WORKER_SETUP): each worker ignores the terminal's Ctrl-C and exits quietly (interrupts.py)
WORKER_SETUP = {"worker_process_setup_hook": "tuner.ray_adaptations.interrupts.setup_worker"}

# Quieter logs and no network calls; nothing here changes what a search does.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no network calls for usage statistics
    "RAY_AIR_NEW_OUTPUT": "0",  # the classic progress table, which honours max_report_frequency
    "RAY_DEDUP_LOGS": "1",
    "RAY_DEDUP_LOGS_ALLOW_REGEX": "resumed from its epoch",  # each resumed trial's line (trial.py), never merged
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard loggers per trial: MLflow is the record
    "RAY_TRAIN_V2_ENABLED": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    # a crashed trial is one line on the console (notices.FailureNotices); its traceback goes to its error file
    # and to MLflow (error.txt), not over the progress table
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # with a tracking server (http://), MLflow prints two lines of links for every run it ends, i.e. every trial
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # the search reads each trial's config.json back for its figures: no download progress bar per trial
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

QUIET_LOGGERS = (
    "ray",
    "ray.tune",
    "ray.train",
    "ray.air",
    "ray.data",
    "ray._private",
    "mlflow",
    "optuna",
    "alembic",
    "ray.train._internal.storage",
)


def prepare_environment() -> None:
    """Before Ray starts (driver), and in each trial's process (whose loggers are its own)."""
    os.environ.update(STATE_EVERY_STEP)  # not a preference: a user's other value would break resume
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # on by default since Ray 2.5x and correct to keep on; its start-up notice is not something the user must act on
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
