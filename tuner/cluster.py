"""Starting or joining Ray, quietly.

Out of the box Ray 2.60 tries to send usage statistics (this is an offline research tool), prints a line per
checkpoint and per trial start, and writes a new "output engine" table that ignores our progress reporter.
These settings must be in the environment before Ray starts, and are inherited by its workers.
"""

from __future__ import annotations

import logging
import os
import warnings

from tuner.config import UserError

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",         # no network calls for usage statistics
    "RAY_AIR_NEW_OUTPUT": "0",              # the classic progress table, which honours max_report_frequency
    "RAY_DEDUP_LOGS": "1",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard loggers per trial: MLflow is the record
    "RAY_TRAIN_V2_ENABLED": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    # snapshot the experiment state after every event, not every ~10 s: a killed driver then loses no finished
    # trial (the snapshot is a few small pickles; measured cost is in the README)
    "TUNE_GLOBAL_CHECKPOINT_S": "0",
}


def quiet_environment() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # on by default since Ray 2.5x and correct to keep on; its start-up notice is not something the user must act on
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    for name in ("ray", "ray.tune", "ray.train", "ray.air", "ray.data", "ray._private", "mlflow", "optuna",
                 "alembic", "ray.train._internal.storage"):
        logging.getLogger(name).setLevel(logging.WARNING)


class ClusterError(UserError):
    """Ray could not be started or joined; the message is one line for the user."""


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """A local Ray (address None) or an existing cluster (`--address`)."""
    quiet_environment()
    import ray

    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True,
                  configure_logging=True)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    except Exception as error:  # Ray raises many types here; the user needs one line, not a traceback
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "auth" in message.lower() or "token" in message.lower():
            message += (" -- this cluster uses token authentication: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to "
                        "the head node's token, see README 'Running on a cluster'")
        target = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ClusterError(f"could not start or reach {target}: {message}") from None
