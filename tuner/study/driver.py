"""A study, once its plan stands: the study's MLflow run, the arms' searches, the confirm stage, the summary.
(tuner/study/__main__.py is the command line; this module imports Ray and torch.)"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tuner.config.settings import SearchSettings
from tuner.config.study_file import Study
from tuner.errors import SetupError
from tuner.search.folder import RECORD, SearchRecord, claim
from tuner.search.opening import open_search, plan_text
from tuner.search.ray_cluster import init_ray
from tuner.study.confirm import open_confirm_run, run_confirm
from tuner.study.opening import StudyRecord
from tuner.study.results import blocks_rows, confirm_configs, load_confirmed, pick_candidates
from tuner.study.tables import by_name, summary_tables, units
from tuner.tracking.parent_run import reopen_run, start_parent_run
from tuner.tracking.reader import load_searches
from tuner.tracking.store import ARM_EXPERIMENTS, BASELINE, REFERENCE, ROLE, STATUS, STORAGE, STUDY, Role, mlflow_client
from tuner.trial.data import load_arrays

SUMMARY = "study.md"


def search_key(arm: str, repetition: int) -> str:
    """An arm's search in one repetition, as the study's record names it."""
    return f"{arm} r{repetition}"


def study_settings(folder: Path, record: StudyRecord, address: str | None) -> SearchSettings:
    """What the study's Tune runs share (its arms' searches and its confirm stage): where they keep their files and
    their MLflow runs, the data, the Ray cluster, the retries a crashed trial gets."""
    return SearchSettings(
        space="",  # each arm's space file; none for the confirm stage, which is given its configs
        storage=str(folder),
        mlflow_uri=record.mlflow_uri,
        data_dir=record.data_dir,
        address=address,
        study_run_id=record.parent_run_id,
    )


def run_arms(study: Study, folder: Path, record: StudyRecord, address: str | None) -> int:
    """Each repetition of each arm's search, repetition by repetition (so a study cut short has whole repetitions of
    every arm): new, continued, or skipped when it finished."""
    from tuner.search.driver import run_search

    for repetition in range(study.repetitions):
        for arm in study.spaces:
            arm_space = study.repetition_space(arm, repetition)
            key = search_key(arm, repetition)
            space_file = folder / "arms" / f"{arm_space.name}.yaml"
            if not space_file.exists():
                space_file.parent.mkdir(parents=True, exist_ok=True)
                space_file.write_text(arm_space.text)
            previous = record.arms.get(key)
            if previous and (Path(previous) / RECORD).exists():
                if SearchRecord.load(Path(previous)).status == "finished":
                    continue
            else:
                previous = None
            settings = dataclasses.replace(
                study_settings(folder, record, address), space=str(space_file), experiment_name=study.experiment(arm)
            )
            space, arm_folder, arm_record = open_search(settings, previous, fresh=True)
            record.arms[key] = str(arm_folder)
            record.save(folder)
            print(f"\n== arm {key}\n" + plan_text(space, arm_folder, arm_record, bool(previous), address), flush=True)
            started = time.time()
            code = run_search(space, arm_folder, arm_record, bool(previous), arm_record.settings)
            record.wall_s[key] = record.wall_s.get(key, 0.0) + time.time() - started
            record.save(folder)
            if code:
                return code
    return 0


def open_study_run(client: MlflowClient, study: Study, folder: Path, record: StudyRecord) -> None:
    if record.parent_run_id:
        reopen_run(client, record.parent_run_id)
        return
    tags = {ROLE: Role.STUDY, STUDY: study.name, STORAGE: str(folder), REFERENCE: study.reference}
    tags[BASELINE] = study.baseline
    tags[ARM_EXPERIMENTS] = ",".join(study.experiment(arm) for arm in study.spaces)  # where its searches are
    params = {"arms": ",".join(study.spaces), "seeds": ",".join(map(str, study.seeds))}
    params["repetitions"] = str(study.repetitions)
    record.parent_run_id = start_parent_run(client, study.name, folder.name, tags, params, study.text, "study.yaml")


def candidate_line(c) -> str:
    where = f"{c.name} r{c.repetition}"
    return f"{where} ({c.trial_id}, val {c.val_acc:.4f})" if c.trial_id else f"{where} (never completed: not confirmed)"


def search_trials(client: MlflowClient, study: Study, record: StudyRecord) -> dict:
    """(arm, repetition) -> the trials of that search, read back from MLflow as the report reads them."""
    searches = {s.run_id: s for s in load_searches(client, [study.experiment(arm) for arm in study.spaces])}
    trials = {}
    for repetition in range(study.repetitions):
        for arm in study.spaces:
            folder = record.arms.get(search_key(arm, repetition))
            run_id = SearchRecord.load(Path(folder)).parent_run_id if folder else ""
            trials[arm, repetition] = searches[run_id].trials if run_id in searches else []
    return trials


def dgl_trials_by_arm(study: Study, trials: dict) -> dict:
    """arm -> its trials over every repetition, for the DGL arms (the per-K table)."""
    by_arm: dict[str, list] = {}
    for (arm, _), arm_trials in trials.items():
        if study.spaces[arm].trainer == "dgl":
            by_arm.setdefault(arm, []).extend(arm_trials)
    return by_arm


def run_study(study: Study, folder: Path, record: StudyRecord, address: str | None) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    lock = claim(folder)  # held until this process ends
    if lock is None:
        raise SetupError(f"{folder}: another driver is running this study")
    client = mlflow_client(record.mlflow_uri)
    open_study_run(client, study, folder, record)
    record.status = "running"
    record.save(folder)
    code = run_arms(study, folder, record, address)
    if code:
        return stopped(client, folder, record, code)

    trials = search_trials(client, study, record)
    if not record.confirm_run_id:
        candidates = pick_candidates(trials, study.write_up, study.model, study.confirm_seeds)
        record.confirm_run_id = open_confirm_run(client, study.name, record.parent_run_id, candidates)
        record.save(folder)
    else:  # a resumed confirm stage re-trains what it chose at first
        candidates = load_confirmed(client, record.confirm_run_id)
        reopen_run(client, record.confirm_run_id)
    configs = confirm_configs(candidates)
    print(
        f"\n== confirm: {len(configs)} runs (config x seed) for {len(candidates)} candidates: "
        + ", ".join(candidate_line(c) for c in candidates),
        flush=True,
    )
    started = time.time()
    arrays = load_arrays(record.data_dir)
    init_ray(address)
    settings = study_settings(folder, record, address)
    ended = not configs or run_confirm(study.first, folder, configs, arrays, settings, record.confirm_run_id)
    record.wall_s["confirm"] = record.wall_s.get("confirm", 0.0) + time.time() - started
    record.save(folder)
    if not ended:
        return stopped(client, folder, record, 130)
    client.set_terminated(record.confirm_run_id)
    finish(client, study, folder, record, trials)
    return 0


def finish(client: MlflowClient, study: Study, folder: Path, record: StudyRecord, trials: dict) -> None:
    confirmed = load_confirmed(client, record.confirm_run_id)
    blocks = blocks_rows(dgl_trials_by_arm(study, trials), study.model)
    tables = {
        markdown: summary_tables(confirmed, study.reference, blocks, markdown, study.baseline)
        for markdown in (False, True)
    }
    print("\n" + "\n".join(tables[False]))
    walls = wall_text(record.wall_s)
    print(f"\nWall time: {walls}")
    text = "\n".join([f"# Study {folder.name}", "", *tables[True], ""])
    text += f"\nWall time: {walls}\n"
    client.log_text(record.parent_run_id, text, SUMMARY)
    (folder / SUMMARY).write_text(text)
    for name, group in by_name(confirmed).items():
        for kind in ("finals", "peaks"):
            values = units(group, kind)[0]
            if values:
                key = f"test_acc_{kind[:-1]}_mean.{name.replace(' @ ', '.').replace('=', '')}"
                client.log_metric(record.parent_run_id, key, sum(values) / len(values))
    for stage, seconds in record.wall_s.items():
        if math.isfinite(seconds):
            client.log_metric(record.parent_run_id, f"wall_min.{stage.replace(' ', '.')}", seconds / 60)
    client.set_tag(record.parent_run_id, STATUS, "finished")
    client.set_terminated(record.parent_run_id)
    record.status = "finished"
    record.save(folder)
    print(
        f"\nStudy folder: {folder}\nThe report (tables, confirm curves, per-K table): python -m tuner.report "
        f"--mlflow-uri {record.mlflow_uri} --spaces {study.name}\nThe search-efficiency figure it shows: "
        f"python -m bench.search_efficiency --log-to-run {record.parent_run_id}"
    )


def wall_text(wall_s: dict) -> str:
    """Minutes per arm (summed over its repetitions) and for the confirm stage."""
    per_stage: dict[str, float] = {}
    for key, seconds in wall_s.items():
        stage = key.split(" r")[0]
        per_stage[stage] = per_stage.get(stage, 0.0) + seconds
    total = sum(per_stage.values())
    return ", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in per_stage.items()) + (
        f"; {total / 60:.1f} min in all"
    )


def stopped(client: MlflowClient, folder: Path, record: StudyRecord, code: int) -> int:
    record.status = "interrupted"
    record.save(folder)
    client.set_tag(record.parent_run_id, STATUS, "interrupted")
    client.set_terminated(record.parent_run_id, status="KILLED")
    print(f"\nThe study stopped. Continue with:\n  python -m tuner.study --study {record.study} --resume {folder}")
    return code
