"""Run a search: `python -m tuner.run --space dgl_quick`.

The story: read and check the space -> print the plan -> check storage and MLflow -> load CIFAR-10 once ->
start Ray -> open the MLflow parent run -> fit (or restore) under ASHA + Optuna -> evaluate the best trial on
the test set -> summary.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from tuner.config.settings import SPACE_OVERRIDES, SearchSettings
from tuner.config.space_file import list_spaces
from tuner.errors import SetupError, UserError
from tuner.ray_adaptations.environment import prepare_environment
from tuner.search.folder import RECORD, resume_command
from tuner.search.opening import (
    absolute,
    add_shared_flags,
    check_storage_flag,
    open_search,
    plan_text,
    preflight,
)
from tuner.search.optuna_storage import check_storage_url
from tuner.search.warm_start import run_id_of, warm_start_of
from tuner.tracking.store import absolute_tracking_uri


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


def settings_from_flags(args: argparse.Namespace) -> SearchSettings:
    """The flags that say what the search does (not --dry-run/--resume/--fresh, which say what to do with it);
    paths made absolute, so a search resumed from another folder finds the same files."""
    return SearchSettings(
        space=args.space,
        storage=str(Path(args.storage).expanduser().resolve()),  # has a default: never None
        mlflow_uri=absolute_tracking_uri(args.mlflow_uri),
        experiment_name=args.name,
        data_dir=absolute(args.data_dir),
        address=args.address,
        max_failures=args.max_failures,
        **{field: getattr(args, field) for field in SPACE_OVERRIDES},
        verbose=args.verbose,
        warm_start=args.warm_start if run_id_of(args.warm_start or "") else absolute(args.warm_start),
        warm_start_top=args.warm_start_top,
        optuna_storage=args.optuna_storage,
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
        # read once, before anything starts, and handed to the search, which seeds the new study with it. A resumed
        # search's study already holds those trials (it is read again only if it restarts before any trial was saved).
        warm = None if args.resume else warm_start_of(space, settings)
        if warm:
            print(warm.summary(), flush=True)
        if args.dry_run:
            print("\n" + space.describe())
            print("\n--dry-run: nothing was started.")
            return 0
        preflight(folder, record.mlflow_uri)
        from tuner.search.driver import run_search  # heavy imports (Ray, torch) only once the plan stands

        return run_search(space, folder, record, bool(args.resume), settings, warm)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside Ray Tune's own handling (loading data, starting Ray, a 2nd Ctrl-C)
        started = folder is not None and (folder / RECORD).exists()
        continue_with = f" Continue with:\n  {resume_command(args.space, folder)}" if folder and started else ""
        print("\nInterrupted." + continue_with, file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    exit_code = main()
    # the interpreter's last garbage collections walk every object Ray, torch and MLflow made: seconds spent (also
    # after Ctrl-C) freeing memory the process is about to give back anyway
    gc.freeze()
    sys.exit(exit_code)
