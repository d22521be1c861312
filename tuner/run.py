"""Run a search: `python -m tuner.run --space dgl_quick`.

The story: read and check the space -> print the plan -> check storage and MLflow -> load CIFAR-10 once ->
start Ray -> open the MLflow parent run -> fit (or restore) under ASHA + Optuna -> evaluate the best trial on
the test set -> summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import shutil
import sys
from pathlib import Path

from tuner.errors import SetupError, UserError, one_line
from tuner.locations import absolute_tracking_uri, limit_mlflow_http
from tuner.optuna_storage import check_storage_url, shown_url, storage_url
from tuner.ray_adaptations.environment import prepare_environment
from tuner.search_folder import RECORD, SearchRecord, driver_pid, new_name, resume_command, unfinished
from tuner.settings import SearchSettings
from tuner.space import Space
from tuner.space_file import list_spaces, load_space
from tuner.warm_start import run_id_of


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tuner.run", description="Hyperparameter search on Ray Tune.")
    p.add_argument("--space", required=True, help=f"a space name ({', '.join(list_spaces())}) or a YAML path")
    p.add_argument("--num-samples", type=int, help="trials to run (overrides the space)")
    p.add_argument("--max-epochs", type=int, help="cap on each trial's epochs and on ASHA's max_t")
    p.add_argument("--train-subset", type=int, help="train on a stratified subset of this many images")
    p.add_argument("--name", help="MLflow experiment name (default: the space's name)")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=float, help="fractions allowed: 0.25 packs four trials on a GPU")
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial from its checkpoint")
    p.add_argument("--seed", type=int)
    add_shared_flags(p, "search of this space")
    p.add_argument("--fresh", action="store_true", help="start a new search even if an unfinished one exists")
    p.add_argument(
        "--warm-start",
        metavar="SEARCH",
        help="an earlier search, as its folder or its MLflow parent run (runs:/RUN_ID, or the bare run id, in this "
        "search's --mlflow-uri): its completed and pruned trials that fit this space seed this search's sampler",
    )
    p.add_argument(
        "--warm-start-top", type=int, default=0, metavar="K", help="with --warm-start: run its K best configs first"
    )
    p.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="a database for the search's Optuna study, e.g. postgresql://USER:PASSWORD@HOST:5432/optuna on a cluster "
        "(default: optuna.db in the search's folder); kept for --resume",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's full status table every 10 s instead of one progress line per event",
    )
    return p.parse_args(argv)


def add_shared_flags(p: argparse.ArgumentParser, what: str) -> None:
    """The flags `tuner.run` and `tuner.study` share: where data, results and Ray are, and what to do."""
    p.add_argument("--data-dir", help="a folder holding cifar-10-batches-py (default: ./data, downloaded)")
    p.add_argument("--storage", default="./runs", help="where Ray keeps trials and checkpoints (default ./runs)")
    p.add_argument("--mlflow-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
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


def settings_from_flags(args: argparse.Namespace) -> SearchSettings:
    """The flags that say what the search does (not --dry-run/--resume/--fresh, which say what to do with it);
    paths made absolute, so a search resumed from another folder finds the same files."""
    return SearchSettings(
        space=args.space,
        storage=absolute(args.storage),
        mlflow_uri=absolute_tracking_uri(args.mlflow_uri),
        experiment_name=args.name,
        data_dir=absolute(args.data_dir),
        address=args.address,
        max_failures=args.max_failures,
        num_samples=args.num_samples,
        max_epochs=args.max_epochs,
        train_subset=args.train_subset,
        seed=args.seed,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        verbose=args.verbose,
        warm_start=args.warm_start if run_id_of(args.warm_start or "") else absolute(args.warm_start),
        warm_start_top=args.warm_start_top,
        optuna_storage=args.optuna_storage,
    )


def resolve_space(settings: SearchSettings) -> Space:
    space = load_space(settings.space)
    return space.with_overrides(
        num_samples=settings.num_samples,
        max_epochs=settings.max_epochs,
        train_subset=settings.train_subset,
        seed=settings.seed,
        cpus=settings.cpus_per_trial,
        gpus=settings.gpus_per_trial,
        max_concurrent=settings.max_concurrent,
    )


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


def check_start_flags(args: argparse.Namespace) -> None:
    """Flags that say how a new search's study starts: not for a resumed one, which keeps its own."""
    if args.resume:
        for flag in ("warm_start", "optuna_storage"):
            if getattr(args, flag) is not None:
                name = "--" + flag.replace("_", "-")
                raise SetupError(f"{name}: not with --resume (a resumed search keeps the study it started with)")
        if args.warm_start_top:
            raise SetupError("--warm-start-top: not with --resume (a resumed search keeps the study it started with)")
    if args.warm_start_top < 0 or (args.warm_start_top and not args.warm_start):
        raise SetupError(f"--warm-start-top {args.warm_start_top}: a count of 0 or more, with --warm-start")
    if args.optuna_storage:
        check_storage_url(args.optuna_storage)


def check_storage_flag(storage: str) -> None:
    from tuner.cluster import is_uri

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


def check_tracking_uri(uri: str) -> None:
    """One cheap query, with MLflow's HTTP retries turned down so an unreachable server fails in seconds."""
    limit_mlflow_http(max_retries=0, timeout_s=10)
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # MLflow raises many types; the user needs one line
        raise SetupError(f"--mlflow-uri {uri}: cannot use this tracking store ({one_line(error)})") from None


def main(argv=None) -> int:
    prepare_environment()
    args = parse_args(argv)
    folder = None
    try:
        check_storage_flag(args.storage)
        check_start_flags(args)
        space, folder, record = open_search(settings_from_flags(args), args.resume, args.fresh)
        settings = record.settings
        print(plan_text(space, folder, record, bool(args.resume), settings.address), flush=True)
        # checked before anything starts; the new study is seeded when the search starts. A resumed search's study
        # already holds those trials (it is seeded again only if it restarts before any trial was saved).
        if settings.warm_start and not args.resume:
            from tuner.warm_start import load_warm_start

            warm = load_warm_start(settings.warm_start, space, settings.warm_start_top, settings.mlflow_uri)
            print(warm.summary(), flush=True)
        if args.dry_run:
            print("\n" + space.describe())
            print("\n--dry-run: nothing was started.")
            return 0
        preflight(folder, record.mlflow_uri)
        from tuner.search import run_search  # heavy imports (Ray, torch) only once the plan stands

        return run_search(space, folder, record, bool(args.resume), settings)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside Ray Tune's own handling (loading data, starting Ray, a 2nd Ctrl-C)
        started = folder is not None and (folder / RECORD).exists()
        print(
            "\nInterrupted." + (f" Continue with:\n  {resume_command(args.space, folder)}" if started else ""),
            file=sys.stderr,
            flush=True,
        )
        return 130


if __name__ == "__main__":
    exit_code = main()
    # the interpreter's last garbage collections walk every object Ray, torch and MLflow made: seconds spent (also
    # after Ctrl-C) freeing memory the process is about to give back anyway
    gc.freeze()
    sys.exit(exit_code)
