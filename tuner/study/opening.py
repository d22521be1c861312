"""Opening a study, before anything runs: its folder and record (study.json: the arms' search folders, the MLflow
runs, the wall time per stage), the unfinished study `--resume` means, and the plan with its cost estimate."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from pathlib import Path

from tuner.config.space import label
from tuner.config.study_file import Study
from tuner.errors import SetupError
from tuner.files import atomic_write
from tuner.search.folder import driver_pid, new_name
from tuner.search.opening import absolute
from tuner.text import fmt_value

STUDY_RECORD = "study.json"
# what the GPU-hours estimate assumes (not measured): one VGG16 (width 1) epoch on 45,000 images at batch 128 costs
# this many seconds of a whole recent GPU (H100 class); DGL's 13 auxiliary heads make its epoch dearer
GPU_EPOCH_S = {"backprop": 10.0, "dgl": 20.0}
# shared keys the plan shows beside the budget's data and epochs (a study file refuses an arm that sets one)
PLAN_KEYS = ("width", "batch_size", "optimizer", "augment", "dropout", "label_smoothing")


@dataclass
class StudyRecord:
    name: str
    study: str  # the --study argument
    storage: str
    mlflow_uri: str
    data_dir: str | None
    text: str = ""  # the study file as the study started with it: a resumed study must run the same
    parent_run_id: str = ""
    confirm_run_id: str = ""
    arms: dict = field(default_factory=dict)  # arm -> its search's folder
    status: str = "running"  # running | interrupted | finished
    wall_s: dict = field(default_factory=dict)  # stage -> seconds, summed over sessions
    created: float = field(default_factory=time.time)

    def save(self, folder: Path) -> None:
        atomic_write(folder / STUDY_RECORD, json.dumps(asdict(self), indent=2).encode())

    @classmethod
    def load(cls, folder: Path) -> StudyRecord:
        return cls(**json.loads((folder / STUDY_RECORD).read_text()))


def unfinished_studies(storage: Path, name: str) -> list:
    found = []
    for path in storage.glob(f"*/{STUDY_RECORD}") if storage.is_dir() else ():
        try:
            record = StudyRecord.load(path.parent)
        except (OSError, ValueError, TypeError, KeyError):  # not a study's record, or an older layout
            continue
        if record.name == name and record.status != "finished":
            found.append((record.created, path.parent))
    return [folder for _, folder in sorted(found)]


def locate(args, study: Study, storage: Path, uri: str) -> tuple:
    """The folder and record of a new study run, or of the one --resume continues. Touches nothing."""
    if not args.resume:
        record = StudyRecord(study.name, args.study, str(storage), uri, absolute(args.data_dir), study.text)
        return storage / new_name(study.name), record
    pending = unfinished_studies(storage, study.name) if args.resume == "latest" else [Path(args.resume).resolve()]
    if not pending or not (pending[-1] / STUDY_RECORD).is_file():
        raise SetupError(f"--resume {args.resume}: no unfinished run of the study '{study.name}' (under {storage})")
    if driver_pid(pending[-1]):
        raise SetupError(f"--resume {pending[-1]}: that study is running now (driver pid {driver_pid(pending[-1])})")
    try:
        record = StudyRecord.load(pending[-1])
    except (OSError, ValueError, TypeError, KeyError):
        raise SetupError(f"--resume {pending[-1]}: not a study folder (no readable {STUDY_RECORD})") from None
    if record.status == "finished" or record.name != study.name:
        raise SetupError(f"--resume {pending[-1]}: not an unfinished run of the study '{study.name}'")
    if record.text and record.text != study.text:
        raise SetupError(
            f"--resume {pending[-1]}: {label(study.path)} was edited since this study started "
            f"({first_change(record.text, study.text)}); resuming would mix two studies: put the file back as it was, "
            "or start the study afresh without --resume"
        )
    return pending[-1], record


def first_change(before: str, now: str) -> str:
    """Where two texts first differ, for one line of an error message: `line 5: 'a' then, 'b' now`."""
    for number, (old, new) in enumerate(zip_longest(before.splitlines(), now.splitlines(), fillvalue=""), 1):
        if old != new:
            return f"line {number}: {old.strip()[:60]!r} then, {new.strip()[:60]!r} now"
    return "in line endings only"


def plan(study: Study, folder: Path, record: StudyRecord) -> str:
    first = study.first
    cfg, sched = first.base_config(), first.scheduler
    asha = f"ASHA grace {sched.grace_period}, reduction {sched.reduction_factor}" if sched.type == "asha" else "FIFO"
    candidates = len(study.spaces) + len(study.write_up)
    shared = ", ".join(f"{k}={'searched' if k in first.params else fmt_value(getattr(cfg, k))}" for k in PLAN_KEYS)
    lines = [
        f"Study {folder.name}: {study.model}, {len(study.spaces)} arms under one budget:",
        f"  every arm: {shared}",
        f"  each arm: {first.num_samples} trials x up to {cfg.epochs} epochs ({asha}), train subset "
        f"{cfg.train_subset or 'all'}, {cfg.val_size} validation images (split seed {cfg.split_seed}), "
        f"{first.max_concurrent or 'unlimited'} at once, "
        f"{first.resources.cpu:g} CPU / {first.resources.gpu:g} GPU each",
    ]
    for arm, space in study.spaces.items():
        lines.append(f"  arm {arm}: {space.trainer}, searching {', '.join(space.params)}")
    reps = study.repetitions
    if reps > 1:
        lines.append(
            f"  repetitions: every arm's search {reps} times, repetition r with every seed moved on by 1000 r "
            "(trials', searcher's, confirm's); gaps with an interval over the repetitions"
        )
    lines.append(
        f"  confirm: up to {candidates} configs x seeds {', '.join(map(str, study.seeds))} per repetition "
        f"({cfg.epochs} epochs, test split every epoch); gaps against '{study.reference}'"
        + (f", the share of the gap of '{study.baseline}' each arm closes" if study.baseline else "")
    )
    per_trial = halving_epochs(sched, cfg.epochs)
    search_epochs = reps * len(study.spaces) * first.num_samples * per_trial
    confirm_epochs = reps * candidates * len(study.seeds) * cfg.epochs
    lines.append(
        f"  trial-epochs: about {search_epochs:.0f} searching ({per_trial:.1f} per trial if ASHA halves at each rung; "
        f"at most {reps * len(study.spaces) * first.num_samples * cfg.epochs}) + {confirm_epochs} confirming"
    )
    if first.resources.gpu:
        epochs = {  # arm -> (searching, confirming) trial-epochs
            arm: (
                reps * first.num_samples * per_trial,
                reps * len(study.seeds) * (1 + (arm in study.write_up)) * cfg.epochs,
            )
            for arm in study.spaces
        }
        cost = {arm: GPU_EPOCH_S.get(space.trainer, max(GPU_EPOCH_S.values())) for arm, space in study.spaces.items()}
        searching, confirming = (sum(e[stage] * cost[arm] for arm, e in epochs.items()) / 3600 for stage in (0, 1))
        lines.append(
            f"  estimated GPU-hours: {searching + confirming:.0f} (searching {searching:.0f}, confirming "
            f"{confirming:.0f}), assuming, not measured, these seconds per epoch of a whole GPU: "
            + ", ".join(f"{t} {s:g}" for t, s in GPU_EPOCH_S.items())
        )
    experiments = ", ".join(study.experiment(arm) for arm in study.spaces)
    lines += [
        f"  study folder: {folder}",
        f"  MLflow: {record.mlflow_uri}, experiment '{study.name}' (the study and its confirm stage); the arms' "
        f"searches in one experiment per arm: {experiments}",
    ]
    return "\n".join(lines)


def halving_epochs(scheduler, epochs: int) -> float:
    """Epochs per trial if ASHA kept 1/reduction of the trials at each rung (grace, grace*r, ... then max_t); Ray's
    asynchronous ASHA promotes more, so this is a lower estimate. FIFO: every epoch."""
    if scheduler.type != "asha":
        return float(epochs)
    rungs, rung = [], scheduler.grace_period
    while rung < scheduler.max_t:
        rungs.append(rung)
        rung *= scheduler.reduction_factor
    rungs.append(scheduler.max_t)
    return sum((rungs[i] - (rungs[i - 1] if i else 0)) / scheduler.reduction_factor**i for i in range(len(rungs)))
