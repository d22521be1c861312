"""Study files: several trainers searched under one shared budget, then their best configs re-trained with new seeds.

A study (`studies/NAME.yaml`, documented in studies/README.md) has a `budget` -- everything a search spends and
everything its arms share: trials, epochs, scheduler, searcher, data, resources, the fixed values and the searched
distributions of the keys every arm has -- and `arms`, each a trainer that may only add keys of its own. Each arm
becomes an ordinary search space (budget + the arm's keys), checked like any space file. Everything is checked
before anything is created: a bad file raises SpaceError with one line naming the study file and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from models.catalog import num_units
from tuner.config.dimension import same
from tuner.config.keys import APPLIES_WHEN, applies
from tuner.config.schema import KEYS, _Shape, problem
from tuner.config.space import Space, SpaceProblems, label
from tuner.config.space_file import space_from_text
from tuner.config.yaml_file import find_file, read_yaml, shipped
from tuner.text import yaml_value

STUDIES_DIR = Path(__file__).resolve().parents[2] / "studies"
# what a search spends: set once, for every arm (an arm that names one is refused)
BUDGET_SECTIONS = ("num_samples", "max_concurrent", "resources", "scheduler", "searcher", "metric", "mode")
REPETITION_SEED_STRIDE = 1000  # repetition r: every seed (trials', searcher's, confirm's) moved on by 1000 r
ARM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # an arm's name goes into file and run names
# keys only some trainers read that are still set once for all arms, and why
SET_ONCE = {"stages": "it changes how DGL's blocks run (pipelined processes) and so the wall time, not what they learn"}


class Budget(_Shape):
    fixed: dict[str, Any]
    search: dict[str, Any] = Field(default_factory=dict)
    scheduler: Any = None
    searcher: Any = None
    num_samples: Any
    max_concurrent: Any = None
    resources: Any = None
    repetitions: int = Field(1, ge=1, le=100)  # each arm's search run this many times, with other seeds


class Arm(_Shape):
    trainer: Any
    fixed: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)  # the arm's own keys of budget's points
    write_up: dict[str, Any] = Field(default_factory=dict)  # also confirm the best trial with these values


class Confirm(_Shape):
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=2)
    reference: str = "backprop"  # the arm every gap is measured against
    baseline: str = ""  # optional: the arm whose gap to the reference the other arms' levers try to close


class StudyFile(_Shape):
    description: str = ""
    model: Any
    budget: Budget
    arms: dict[str, Arm] = Field(min_length=2)
    confirm: Confirm = Field(default_factory=Confirm)


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    text: str
    description: str
    model: str
    spaces: dict[str, Space]  # arm -> its validated search space (space.text is the YAML the arm's search runs)
    write_up: dict[str, dict] = field(default_factory=dict)  # arm -> the values its write-up config has
    seeds: tuple = (1, 2, 3)  # the confirm stage's seeds (of repetition 0; see confirm_seeds)
    reference: str = "backprop"
    baseline: str = ""
    repetitions: int = 1

    @property
    def first(self) -> Space:
        return next(iter(self.spaces.values()))

    def experiment(self, arm: str) -> str:
        """The MLflow experiment of an arm's searches (every repetition's): one per arm, so that each reads as its own
        experiment at scale; the study's own run and its confirm stage stay in the experiment named for the study."""
        return f"{self.name}-{arm}"

    def confirm_seeds(self, repetition: int) -> tuple:
        """The confirm seeds of a repetition's candidates: new seeds for every repetition, so that two repetitions
        that chose the same config still measure it twice, independently."""
        return tuple(seed + REPETITION_SEED_STRIDE * repetition for seed in self.seeds)

    def repetition_space(self, arm: str, repetition: int) -> Space:
        """The arm's search space in a repetition: the trials' seed and the searcher's seed moved on by 1000 times the
        repetition's number; everything else (the budget, the validation split, the first points) the same."""
        return repetition_space(self.spaces[arm], repetition)


def list_studies() -> list[str]:
    return shipped(STUDIES_DIR)


def normalized(key: str, value, model: str):
    """num_blocks null means one block per conv layer: compared as that number."""
    return num_units(model) if key == "num_blocks" and value is None else value


def load_study(name_or_path: str) -> Study:
    """Read and check a study and every arm's space. Raises SpaceError with one line; creates nothing."""
    path = find_file(name_or_path, STUDIES_DIR, "study")
    file = SpaceProblems(label(path))
    text, data = read_yaml(path, file)
    file.mapping(data, "top level", list(StudyFile.model_fields))
    for arm, raw in (data.get("arms") or {}).items() if isinstance(data.get("arms"), dict) else ():
        if not isinstance(arm, str) or not ARM_NAME.fullmatch(arm):
            file.fail(
                f"arms.{arm}", "an arm's name must be a plain identifier", "letters, digits and _, not first a digit"
            )
        for key in raw if isinstance(raw, dict) else ():
            if key in BUDGET_SECTIONS:
                file.fail(f"arms.{arm}.{key}", "part of the shared budget: set it once, under budget")
    try:
        spec = StudyFile.model_validate(data)
    except ValidationError as error:
        file.fail(*problem(error.errors()[0], StudyFile))
    if "seed" in spec.budget.search:
        file.fail("budget.search.seed", "the seed is not searched: the study sets the seeds", "a seed in budget.fixed")
    shared = shared_keys(spec)
    for key in ("reference", "baseline"):
        arm = getattr(spec.confirm, key)
        if (arm or key == "reference") and arm not in spec.arms:
            file.fail(f"confirm.{key}", f"'{arm}' is not an arm", ", ".join(spec.arms))
    seed = spec.budget.fixed.get("seed", 0)
    search_seeds = {seed + REPETITION_SEED_STRIDE * r for r in range(spec.budget.repetitions)}
    confirm_seeds = [s + REPETITION_SEED_STRIDE * r for r in range(spec.budget.repetitions) for s in spec.confirm.seeds]
    if search_seeds & set(confirm_seeds) or len(set(spec.confirm.seeds)) < len(spec.confirm.seeds):
        file.fail(
            "confirm.seeds",
            f"must be distinct and differ from the searches' seeds {', '.join(map(str, sorted(search_seeds)))} "
            f"(repetition r moves every seed on by {REPETITION_SEED_STRIDE} r)",
        )
    spaces, write_up = {}, {}
    for arm, arm_spec in spec.arms.items():
        points = {f"points_to_evaluate[{i}]": point for i, point in enumerate(arm_spec.points_to_evaluate)}
        for section, keys in {"fixed": arm_spec.fixed, "search": arm_spec.search, **points}.items():
            for key in (key for key in keys if key in shared):
                file.fail(f"arms.{arm}.{section}.{key}", shared[key])
        space_text = arm_space_text(path.stem, arm, spec, file)
        spaces[arm] = space_from_text(space_text, f"{path.stem}-{arm}", f"{file.label}: arms.{arm} (as a search space)")
        write_up[arm] = check_write_up(file, arm, arm_spec, spaces[arm])
    return Study(
        name=path.stem,
        path=path,
        text=text,
        description=" ".join(spec.description.split()),
        model=spaces[spec.confirm.reference].model,
        spaces=spaces,
        write_up={arm: values for arm, values in write_up.items() if values},
        seeds=tuple(spec.confirm.seeds),
        reference=spec.confirm.reference,
        baseline=spec.confirm.baseline,
        repetitions=spec.budget.repetitions,
    )


def trainer_reads(trainer, key: str) -> bool:
    """Whether a trial of `trainer` reads `key` under some value of the keys it depends on (the rule MLflow's params
    follow: tuner/tracking/views.py), e.g. DGL reads sim_weight (with local_loss predsim), backprop never does."""
    config, parent = {"trainer": trainer}, key
    while parent in APPLIES_WHEN and APPLIES_WHEN[parent][0] != "trainer":
        parent, values = APPLIES_WHEN[parent]
        config[parent] = values[0]
    return applies(key, config)


def shared_keys(spec: StudyFile) -> dict:
    """Key -> why no arm may set it: the keys every arm's trainer reads, those the budget sets, and SET_ONCE."""
    trainers = [arm.trainer for arm in spec.arms.values()]
    read_by_all = [
        key for key in KEYS if key not in ("trainer", "model") and all(trainer_reads(t, key) for t in trainers)
    ]
    shared = {
        key: f"'{key}' is read by every arm's trainer ({', '.join(sorted(set(map(str, trainers))))}): a shared key, "
        "set once under budget.fixed or budget.search so that every arm trains with the same; an arm adds keys that "
        "only some arms' trainers read"
        for key in read_by_all
    }
    for key in {**spec.budget.fixed, **spec.budget.search}:
        shared.setdefault(key, f"'{key}' is set by the budget (budget.fixed / budget.search): every arm has the same")
    for key, why in SET_ONCE.items():
        shared.setdefault(key, f"'{key}' is set once, under budget.fixed: {why}")
    return shared


def arm_space_text(study: str, arm: str, spec: StudyFile, file: SpaceProblems) -> str:
    """The arm's search space as YAML: the budget with the arm's keys added."""
    budget, arm_spec = spec.budget, spec.arms[arm]
    searcher = dict(budget.searcher or {"type": "optuna_tpe"})
    points = [dict(p) for p in searcher.get("points_to_evaluate") or []]
    if len(arm_spec.points_to_evaluate) > len(points):
        file.fail(
            f"arms.{arm}.points_to_evaluate",
            f"lists {len(arm_spec.points_to_evaluate)} points; budget.searcher.points_to_evaluate has {len(points)} "
            "(each arm point adds the arm's own keys to the budget's point at the same place)",
        )
    for i, extra in enumerate(arm_spec.points_to_evaluate):
        points[i].update(extra)
    searcher["points_to_evaluate"] = points
    space = {
        "description": f"Arm '{arm}' of the study {study}: its shared budget plus the arm's own keys.",
        "trainer": arm_spec.trainer,
        "model": spec.model,
        "fixed": {**budget.fixed, **arm_spec.fixed},
        "search": {**budget.search, **arm_spec.search},
        "scheduler": budget.scheduler,
        "searcher": searcher,
        "num_samples": budget.num_samples,
        "max_concurrent": budget.max_concurrent,
        "resources": budget.resources,
    }
    header = f"# Arm '{arm}' of the study {study}, written by tuner.study: run as an ordinary search.\n"
    return header + yaml.safe_dump({k: v for k, v in space.items() if v is not None}, sort_keys=False)


def repetition_space(space: Space, repetition: int) -> Space:
    """`space` with its trials' seed and its searcher's seed moved on by 1000 `repetition`, named for it."""
    step = REPETITION_SEED_STRIDE * repetition
    data = yaml.safe_load(space.text)
    data["fixed"]["seed"] = data["fixed"].get("seed", 0) + step
    searcher = data.get("searcher") or {}
    if searcher.get("seed") is not None:
        searcher["seed"] = searcher["seed"] + step
    data["searcher"] = searcher
    if repetition:
        data["description"] = f"{data.get('description', '')} Repetition {repetition}: every seed moved on by {step}."
    header = f"# {space.name}, repetition {repetition}, written by tuner.study: run as an ordinary search.\n"
    name = f"{space.name}-r{repetition}"
    return space_from_text(header + yaml.safe_dump(data, sort_keys=False), name, name)


def check_write_up(file: SpaceProblems, arm: str, arm_spec: Arm, space: Space) -> dict:
    """The write-up's values of an arm's searched keys, checked; and at least one first point must try them."""
    values = {}
    for key, value in arm_spec.write_up.items():
        where = f"arms.{arm}.write_up.{key}"
        if key not in space.params:
            file.fail(where, f"'{key}' is not searched by this arm", ", ".join(space.params))
        if not space.params[key].contains(value):
            file.fail(where, f"{yaml_value(value)} is outside the searched range", space.params[key].describe())
        values[key] = normalized(key, value, space.model)
    tried = any(
        all(k in p and same(normalized(k, p[k], space.model), v) for k, v in values.items())
        for p in space.searcher.points_to_evaluate or []
    )
    if values and not tried:
        file.fail(
            f"arms.{arm}.write_up", "no point in points_to_evaluate has these values: the search might not try them"
        )
    return values
