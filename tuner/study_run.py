"""A study, once its plan stands: the study's MLflow run, the arms' searches, the confirm stage, the summary.
(tuner/study.py is the command line; this module imports Ray and torch.)"""

from __future__ import annotations

import math
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tuner.cluster import init_ray
from tuner.confirm import confirm_configs, open_confirm_run, run_confirm
from tuner.data import load_arrays
from tuner.errors import SetupError
from tuner.parent_run import reopen_run, start_parent_run
from tuner.report.store import load_searches
from tuner.search_folder import RECORD, SearchRecord, claim
from tuner.search_start import open_search, plan_text
from tuner.settings import SearchSettings
from tuner.study_file import Study
from tuner.study_results import blocks_rows, load_confirmed, pick_candidates, summary_tables
from tuner.study_start import StudyRecord

SUMMARY = "study.md"


def run_arms(study: Study, folder: Path, record: StudyRecord, address: str | None) -> int:
    """Each arm's search, in the study's order: new, continued, or skipped when it finished."""
    from tuner.search import run_search

    for arm, arm_space in study.spaces.items():
        space_file = folder / "arms" / f"{arm_space.name}.yaml"
        if not space_file.exists():
            space_file.parent.mkdir(parents=True, exist_ok=True)
            space_file.write_text(arm_space.text)
        previous = record.arms.get(arm)
        if previous and (Path(previous) / RECORD).exists():
            if SearchRecord.load(Path(previous)).status == "finished":
                continue
        else:
            previous = None
        settings = SearchSettings(
            space=str(space_file),
            storage=str(folder),
            mlflow_uri=record.mlflow_uri,
            experiment_name=study.name,
            data_dir=record.data_dir,
            address=address,
            study_run_id=record.parent_run_id,
        )
        space, arm_folder, arm_record = open_search(settings, previous, fresh=True)
        record.arms[arm] = str(arm_folder)
        record.save(folder)
        print(f"\n== arm {arm}\n" + plan_text(space, arm_folder, arm_record, bool(previous), address), flush=True)
        started = time.time()
        code = run_search(space, arm_folder, arm_record, bool(previous), arm_record.settings)
        record.wall_s[arm] = record.wall_s.get(arm, 0.0) + time.time() - started
        record.save(folder)
        if code:
            return code
    return 0


def open_study_run(client: MlflowClient, study: Study, folder: Path, record: StudyRecord) -> None:
    if record.parent_run_id:
        reopen_run(client, record.parent_run_id)
        return
    tags = {"dt.role": "study", "dt.study": study.name, "dt.storage": str(folder), "dt.reference": study.reference}
    params = {"arms": ",".join(study.spaces), "seeds": ",".join(map(str, study.seeds))}
    record.parent_run_id = start_parent_run(client, study.name, folder.name, tags, params, study.text, "study.yaml")


def arm_trials(client: MlflowClient, study: Study, record: StudyRecord) -> dict:
    """arm -> the trials of its search, read back from MLflow as the report reads them."""
    searches = {s.run_id: s for s in load_searches(client, [study.name])}
    trials = {}
    for arm, folder in record.arms.items():
        run_id = SearchRecord.load(Path(folder)).parent_run_id
        trials[arm] = searches[run_id].trials if run_id in searches else []
    return trials


def run_study(study: Study, folder: Path, record: StudyRecord, address: str | None) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    lock = claim(folder)  # held until this process ends
    if lock is None:
        raise SetupError(f"{folder}: another driver is running this study")
    client = MlflowClient(record.mlflow_uri)
    open_study_run(client, study, folder, record)
    record.status = "running"
    record.save(folder)
    code = run_arms(study, folder, record, address)
    if code:
        return stopped(client, folder, record, code)

    trials = arm_trials(client, study, record)
    if not record.confirm_run_id:
        candidates = pick_candidates(trials, study.write_up, study.model)
        record.confirm_run_id = open_confirm_run(client, study.name, record.parent_run_id, candidates)
        record.save(folder)
    else:  # a resumed confirm stage re-trains what it chose at first
        candidates = load_confirmed(client, record.confirm_run_id)
        reopen_run(client, record.confirm_run_id)
    print(
        f"\n== confirm: {len(candidates)} configs x {len(study.seeds)} seeds: "
        + ", ".join(f"{c.name} ({c.trial_id}, val {c.val_acc:.4f})" for c in candidates),
        flush=True,
    )
    started = time.time()
    arrays = load_arrays(record.data_dir)
    init_ray(address)
    ended = run_confirm(
        study.first, folder, confirm_configs(candidates, study.seeds), arrays, record.mlflow_uri, record.confirm_run_id
    )
    record.wall_s["confirm"] = record.wall_s.get("confirm", 0.0) + time.time() - started
    record.save(folder)
    if not ended:
        return stopped(client, folder, record, 130)
    client.set_terminated(record.confirm_run_id)
    finish(client, study, folder, record, trials)
    return 0


def finish(client: MlflowClient, study: Study, folder: Path, record: StudyRecord, trials: dict) -> None:
    confirmed = load_confirmed(client, record.confirm_run_id)
    dgl = [t for arm, space in study.spaces.items() if space.trainer == "dgl" for t in trials.get(arm, [])]
    blocks = blocks_rows(dgl, study.model)
    print("\n" + "\n".join(summary_tables(confirmed, study.reference, blocks, markdown=False)))
    walls = ", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in record.wall_s.items())
    print(f"\nWall time: {walls}")
    text = "\n".join([f"# Study {folder.name}", "", *summary_tables(confirmed, study.reference, blocks, True), ""])
    text += f"\nWall time: {walls}\n"
    client.log_text(record.parent_run_id, text, SUMMARY)
    (folder / SUMMARY).write_text(text)
    for c in confirmed:
        for kind, values in (("final", c.finals()), ("peak", c.peaks())):
            if values:
                key = f"test_acc_{kind}_mean.{c.name.replace(' @ ', '.').replace('=', '')}"
                client.log_metric(record.parent_run_id, key, sum(values) / len(values))
    for stage, seconds in record.wall_s.items():
        if math.isfinite(seconds):
            client.log_metric(record.parent_run_id, f"wall_min.{stage}", seconds / 60)
    client.set_tag(record.parent_run_id, "dt.status", "finished")
    client.set_terminated(record.parent_run_id)
    record.status = "finished"
    record.save(folder)
    print(
        f"\nStudy folder: {folder}\nThe report (tables, confirm curves, per-K table): python -m tuner.report "
        f"--mlflow-uri {record.mlflow_uri} --spaces {study.name}\nThe search-efficiency figure it shows: "
        f"python bench/search_efficiency.py --log-to-run {record.parent_run_id}"
    )


def stopped(client: MlflowClient, folder: Path, record: StudyRecord, code: int) -> int:
    record.status = "interrupted"
    record.save(folder)
    client.set_tag(record.parent_run_id, "dt.status", "interrupted")
    client.set_terminated(record.parent_run_id, status="KILLED")
    print(f"\nThe study stopped. Continue with:\n  python -m tuner.study --study {record.study} --resume {folder}")
    return code
