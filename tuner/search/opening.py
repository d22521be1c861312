"""Opening a search, for `tuner.run` and `tuner.study` alike: the flags both take, the space with the settings'
overrides, the folder and record of a new or resumed search, the plan printed before anything starts, and the checks
that fail early (storage writable, MLflow reachable). Nothing here starts Ray or writes, except preflight's probe."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from tuner.config.settings import SPACE_OVERRIDES, SearchSettings
from tuner.config.space import Space
from tuner.config.space_file import load_space
from tuner.errors import SetupError
from tuner.search.folder import SearchRecord, driver_pid, new_name, resume_command, unfinished
from tuner.search.optuna_storage import shown_url, storage_url
from tuner.tracking.store import DEFAULT_URI, connect


def add_shared_flags(p: argparse.ArgumentParser, what: str) -> None:
    """The flags `tuner.run` and `tuner.study` share: where data, results and Ray are, and what to do."""
    p.add_argument("--data-dir", help="a folder holding cifar-10-batches-py (default: ./data, downloaded)")
    p.add_argument("--storage", default="./runs", help="where Ray keeps trials and checkpoints (default ./runs)")
    p.add_argument("--mlflow-uri", default=DEFAULT_URI, help=f"MLflow tracking URI (default {DEFAULT_URI})")
    p.add_argument("--address", help="an existing Ray cluster, e.g. 10.0.0.1:6379 or auto")
    p.add_argument("--dry-run", action="store_true", help="print the plan; start nothing")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="PATH",
        help=f"continue the latest unfinished {what}, or the one at PATH",
    )


def absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def resolve_space(settings: SearchSettings) -> Space:
    space = load_space(settings.space)
    return space.with_overrides(**{keyword: getattr(settings, field) for field, keyword in SPACE_OVERRIDES.items()})


def locate_resume(resume: str, storage: Path, space_name: str) -> tuple[Path, SearchRecord]:
    """The unfinished search that --resume means: the latest of this space under `storage`, or the folder given."""
    if resume == "latest":
        candidates = unfinished(storage, space_name)
        if not candidates:
            raise SetupError(f"--resume: no unfinished search of '{space_name}' under {storage}")
        folder = candidates[-1]
    else:
        folder = Path(resume).expanduser().resolve()
    try:
        record = SearchRecord.load(folder)
    except (OSError, ValueError, TypeError, KeyError):
        raise SetupError(f"--resume {folder}: not a search folder (no readable search.json)") from None
    if record.status == "finished":
        raise SetupError(f"--resume {folder}: that search already finished")
    if record.space != space_name:
        raise SetupError(f"--resume {folder}: that is a search of '{record.space}', not of '{space_name}'")
    pid = driver_pid(folder)
    if pid:
        raise SetupError(f"--resume {folder}: that search is running now (driver pid {pid})")
    return folder, record


def new_search(settings: SearchSettings, space: Space, fresh: bool) -> tuple[Path, SearchRecord]:
    """A folder and record for a new search. Touches nothing on disk."""
    storage = Path(settings.storage)
    pending = unfinished(storage, space.name)
    if pending and not fresh:
        pid = driver_pid(pending[-1])
        if pid:
            raise SetupError(
                f"a search of '{space.name}' is running now at {pending[-1]} (driver pid {pid}); "
                f"start another beside it with --fresh"
            )
        raise SetupError(
            f"an unfinished search of '{space.name}' is at {pending[-1]}; continue it with "
            f"`{resume_command(settings.space, pending[-1])}` or start another with --fresh"
        )
    name = new_name(space.name)
    record = SearchRecord(
        name=name,
        space=space.name,
        space_path=str(space.path),
        settings=settings,
        experiment=settings.experiment_name or space.name,
    )
    return storage / name, record


def open_search(settings: SearchSettings, resume: str | None, fresh: bool) -> tuple[Space, Path, SearchRecord]:
    """The space, folder and record of the search these settings start, or of the one `resume` continues (a path
    or "latest"). Touches nothing on disk."""
    if not resume:
        space = resolve_space(settings)
        return (space, *new_search(settings, space, fresh))
    folder, record = locate_resume(resume, Path(settings.storage), load_space(settings.space).name)
    # a resumed search keeps what it started with; flags given now are not silently mixed in. Only where Ray runs
    # may differ (a cluster restarted at another address), and the space as named now. --verbose only changes the
    # console: today's flag (though a search Ray restores keeps its first display)
    record.settings = dataclasses.replace(
        record.settings, space=settings.space, address=settings.address, verbose=settings.verbose
    )
    return resolve_space(record.settings), folder, record


def plan_text(space: Space, folder: Path, record: SearchRecord, resume: bool, address: str | None) -> str:
    cfg = space.base_config()
    sched = space.scheduler
    asha = (
        f"ASHA (max_t {sched.max_t}, grace {sched.grace_period}, reduction {sched.reduction_factor})"
        if sched.type == "asha"
        else "no early stopping"
    )
    subset = cfg.train_subset or "all"
    return "\n".join(
        [
            f"{'Resuming' if resume else 'Search'} {record.name}: {space.trainer} on {space.model} "
            f"(width {cfg.width}), {space.num_samples} trials x up to {cfg.epochs} epochs, {asha}",
            f"  searching {', '.join(space.params) or 'nothing'} with {space.searcher.type} "
            f"(seed {space.searcher.seed}); objective: {space.mode} {space.metric} on {cfg.val_size} "
            f"held-out training images; train subset: {subset}",
            f"  per trial: {space.resources.cpu:g} CPU, {space.resources.gpu:g} GPU; "
            f"at most {space.max_concurrent or 'unlimited'} at once; Ray: {address or 'local'}",
            f"  trials and checkpoints: {folder}",
            f"  Optuna study '{record.name}': {shown_url(storage_url(folder, record.settings.optuna_storage))}",
            f"  MLflow: {record.mlflow_uri}, experiment '{record.experiment}'",
            f"  watch it: mlflow ui --backend-store-uri {record.mlflow_uri} --workers 1   (then http://127.0.0.1:5000)",
        ]
    )


def check_storage_flag(storage: str) -> None:
    from tuner.search.ray_cluster import is_uri

    if is_uri(storage):
        raise SetupError(
            f"--storage {storage}: storage URIs are not supported yet (the search's records are local "
            f"files); use a folder, on a cluster one every node mounts (NFS), see docs/cluster.md"
        )


def preflight(folder: Path, mlflow_uri: str) -> None:
    """Fail before any trial runs if results could not be stored."""
    storage = folder.parent
    try:
        storage.mkdir(parents=True, exist_ok=True)
        probe = storage / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise SetupError(f"--storage {storage}: not writable ({error.strerror or error})") from None
    free_mb = shutil.disk_usage(storage).free / 2**20
    if free_mb < 200:
        raise SetupError(f"--storage {storage}: only {free_mb:.0f} MB free; checkpoints need more (200 MB minimum)")
    check_tracking_uri(mlflow_uri)


def check_checkpoint_room(space: Space, storage: Path, kept: int) -> None:
    """Refuse a search whose checkpoints would not fit on --storage's disk: `kept` per trial at the end, and one more
    for each trial running at once while it writes its next. Sized at the space's fixed values (and the defaults of
    what it searches)."""
    from tuner.trial.trainable import checkpoint_bytes

    size = checkpoint_bytes(space.base_config())
    running = min(space.max_concurrent or space.num_samples, space.num_samples)
    need, free = size * (space.num_samples * kept + running), shutil.disk_usage(storage).free
    if need > free:
        raise SetupError(
            f"--storage {storage}: the checkpoints of {space.num_samples} trials need about {need / 2**30:.1f} GiB "
            f"({kept} of ~{size / 2**30:.2f} GiB per trial, one more per trial running), {free / 2**30:.1f} GiB free; "
            f"free some space, lower --num-samples or use another --storage"
        )


def most_stages(space: Space) -> int:
    """The most pipeline stages a trial of this space can have: fixed, or the top of what is searched."""
    param = space.params.get("stages")
    if param is None:
        return space.base_config().stages
    return max(param.hull.values) if param.hull.type == "choice" else param.hull.high


def check_gpu_placement(space: Space, node_gpus: list[float]) -> None:
    """Refuse a search whose trials Ray could never place (it would wait for them forever): a trial asks for its
    stages x the per-trial GPU share in one bundle, on one node (tuner/search/driver.py), and above 1 only whole
    GPUs."""
    share, stages = space.resources.gpu, most_stages(space)
    need, most = share * stages, max(node_gpus, default=0)
    asks = f"resources.gpu (--gpus-per-trial) {share:g}: a trial" + (f" of {stages} stages" if stages > 1 else "")
    if need > 1 and need != int(need):
        raise SetupError(f"{asks} asks Ray for {need:g} GPUs on one node; above 1, Ray places whole GPUs only")
    if need > most:
        raise SetupError(f"{asks} asks Ray for {need:g} GPU on one node; the largest node Ray sees has {most:g}")


def check_tracking_uri(uri: str) -> None:
    """One cheap query, with MLflow's HTTP retries turned down so an unreachable server fails in seconds; a SQLite
    store that is not there yet is created (the search's first run writes to it)."""
    connect(uri, max_retries=0, timeout_s=10, existing=False)
