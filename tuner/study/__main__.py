"""Run a study: `python -m tuner.study --study cpu_vgg16`.

The story: read and check the study and every arm's space (nothing is created before) -> print the plan -> open the
study's MLflow run -> run each arm's search, exactly as `tuner.run` runs a search (its own folder, parent run and
resume), nested under the study -> pick each arm's best config (and DGL's best at the write-up's block count) ->
re-train them with new seeds, measuring the test split every epoch (tuner/study/confirm.py) -> the table: final and peak
test accuracy over seeds, gaps with intervals (tuner/study/results.py). `--resume` continues where it stopped.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from tuner.config.study_file import list_studies, load_study
from tuner.errors import UserError
from tuner.ray_adaptations.environment import prepare_environment
from tuner.search.opening import add_shared_flags, check_storage_flag, preflight
from tuner.study.opening import locate, plan
from tuner.tracking.store import absolute_tracking_uri


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tuner.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True, help=f"a study name ({', '.join(list_studies())}) or a YAML path")
    add_shared_flags(p, "run of this study")
    return p.parse_args(argv)


def main(argv=None) -> int:
    prepare_environment()
    args = parse_args(argv)
    try:
        check_storage_flag(args.storage)
        study = load_study(args.study)
        storage, uri = Path(args.storage).expanduser().resolve(), absolute_tracking_uri(args.mlflow_uri)
        folder, record = locate(args, study, storage, uri)
        print(plan(study, folder, record), flush=True)
        if args.dry_run:
            print("\n".join(f"\n{space.describe()}" for space in study.spaces.values()))
            print("\n--dry-run: nothing was started.")
            return 0
        preflight(folder, record.mlflow_uri)
        from tuner.study.driver import run_study  # heavy imports (Ray, torch) only once the plan stands

        return run_study(study, folder, record, args.address)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nInterrupted. Continue with:\n  python -m tuner.study --study {args.study} --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    exit_code = main()
    gc.freeze()
    sys.exit(exit_code)
