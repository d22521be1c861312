"""What several test files share: a small trainer on given splits, the flags that keep a search's files in the
test's own folder, and a CLI run in a subprocess to interrupt at moments chosen from real state."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

from models.registry import build_trainer
from tuner.config.schema import resolve
from tuner.ray_adaptations.snapshots import RAY_SNAPSHOT, RESUME_DIR
from tuner.trial.epoch import steps_per_epoch


def small_trainer(data, **config):
    """A narrow basiccnn trainer (any trainer, any key overridable) for the splits `data`, on the CPU."""
    cfg = resolve({"model": "basiccnn", "width": 0.125, "batch_size": 32, **config})
    return build_trainer(cfg, "cpu", steps_per_epoch(data.train, cfg.batch_size))


def local_store(tmp_path) -> list[str]:
    """`--storage` and `--mlflow-uri` inside the test's folder."""
    return ["--storage", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"]


# the config keys a DGL trial with the default flatten_mlp head and local_loss=pred does not read (never logged)
UNREAD_BY_DGL_PRED = {
    "sim_weight",
    "lr_step_epochs",
    "lr_gamma",
    "aux_pool",
    "aux_convs",
    "sg_kernel",
    "sg_after_last_block",
    "sg_last_init",
}


class Driver:
    """`python -m MODULE ARGS` in its own process group, as a terminal runs it (so Ctrl-C reaches Ray's processes
    too), with the faults of tuner/trial/trainable.py's test hook; its output goes to `<name>.log`."""

    def __init__(self, args, tmp_path, name, faults="", module="tuner.run"):
        self.log = tmp_path / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "DT_FAULT": faults, "DT_FAULT_DIR": str(tmp_path / "faults")}
        (tmp_path / "faults").mkdir(exist_ok=True)
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=tmp_path,
            env=env,
            stdout=open(self.log, "w"),  # noqa: SIM115  (the child writes it for its life)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, condition, what: str, timeout: float = 300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = condition()
            if value:
                return value
            assert self.proc.poll() is None, (
                f"the driver exited ({self.proc.returncode}) before {what}:\n{self.output[-3000:]}"
            )
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output[-3000:]}")

    def kill(self, worker_pid: int) -> None:
        """SIGKILL the driver alone, as a crash would; Ray's processes (the worker `worker_pid` too) die with it."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()
        deadline = time.time() + 60
        while not gone(worker_pid) and time.time() < deadline:
            time.sleep(0.2)
        assert gone(worker_pid), "a trial's worker outlived its driver"

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"the driver did not exit:\n{self.output[-3000:]}") from None


def marker(tmp_path, action: str, attempt: int) -> Path | None:
    found = sorted((tmp_path / "faults").glob(f"*-{action}-{attempt}"))
    return found[0] if found else None


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def durable_trials(folder: Path) -> dict:
    """trial id -> Ray status in the state a resumed search starts from."""
    snapshot = folder / RESUME_DIR / RAY_SNAPSHOT
    if not snapshot.exists():
        return {}
    files = pickle.loads(snapshot.read_bytes())
    (state,) = [data for name, data in files.items() if name.startswith("experiment_state-")]
    trials = [json.loads(trial) for trial, _ in json.loads(state)["trial_data"]]
    return {trial["trial_id"]: trial["status"] for trial in trials}
