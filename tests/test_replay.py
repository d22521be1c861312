"""bench/replay.py: a replayed trial reports the recorded curve through Ray Tune, ASHA stops replayed trials where
the project's ASHA decides on those reports, and the direct replay (what the benchmark repeats) is the Tuner's
search, result for result."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from bench.curve_table import Curve, CurveTable
from bench.record_curves import sampled_configs
from bench.replay import ReplayedTrial, direct_replay, ray_replay
from tuner.config.space_file import load_space
from tuner.ray_adaptations.asha import make_trial_scheduler

ROOT = Path(__file__).resolve().parent.parent

SPACE = load_space(str(ROOT / "bench/curves/dgl_small.yaml"))  # 9 epochs; ASHA rungs at 1, 3, 9


def synthetic_table(count: int = 40) -> CurveTable:
    """Configs drawn as the recorder draws them, curves that rise at config-specific rates (one diverges)."""
    rng = np.random.default_rng(0)
    curves = []
    for index, config in enumerate(sampled_configs(SPACE, count)):
        rate, top = rng.uniform(0.1, 0.8), rng.uniform(0.15, 0.5)
        acc = [round(top * (1 - np.exp(-rate * epoch)) + rng.uniform(0, 0.02), 3) for epoch in range(1, 10)]
        diverged = index == 3
        acc = acc[:4] if diverged else acc
        curves.append(Curve(index, config, tuple(acc), tuple(rng.uniform(0.5, 2.0, len(acc)).round(3)), diverged))
    return CurveTable({"space": SPACE.name}, tuple(curves))


ALONE = "DT_REPLAY_ALONE"  # set when these tests run in a process of their own
RAY_TESTS = (
    "test_replayed_trials_report_the_recorded_curves_through_tune",
    "test_asha_stops_replayed_trials_where_it_decides_and_the_direct_replay_is_the_tuners_search",
)
in_own_process = pytest.mark.skipif(
    not os.environ.get(ALONE), reason="run by test_ray_replay_tests_in_their_own_process"
)


@pytest.mark.slow
def test_ray_replay_tests_in_their_own_process():
    """The tests below start a local Ray in the test process; Ray caches its auth config at import, so one started
    after another test's (tests/test_machinery.py) cannot be reached: they run in a fresh pytest process."""
    ids = [f"{__file__}::{name}" for name in RAY_TESTS]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids],
        env={**os.environ, ALONE: "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout[-3000:]


@pytest.fixture(scope="module")
def ray_started():
    import ray

    from tuner.search.ray_cluster import init_ray

    init_ray(num_cpus=1)
    yield
    ray.shutdown()


def by_trial(reports) -> dict:
    trials = {}
    for trial_id, epoch, val_acc, index in reports:
        trials.setdefault(trial_id, []).append((epoch, val_acc, index))
    return trials


@pytest.mark.slow
@in_own_process
def test_replayed_trials_report_the_recorded_curves_through_tune(ray_started, tmp_path):
    table = synthetic_table()
    run = ray_replay(SPACE, table, "random", seed=0, budget=30, storage=tmp_path / "fifo")
    trials = by_trial(run["reports"])
    assert len(trials) >= 4 and run["epochs"] == 30
    for number, reports in enumerate(trials.values()):
        curve = table.curves[reports[0][2]]
        assert [epoch for epoch, _, _ in reports] == list(range(1, len(reports) + 1))
        assert tuple(acc for _, acc, _ in reports) == curve.val_acc[: len(reports)]
        if number < len(trials) - 1:  # FIFO: every trial but the one the budget cut runs its whole curve
            assert len(reports) == len(curve.val_acc)


@pytest.mark.slow
@in_own_process
def test_asha_stops_replayed_trials_where_it_decides_and_the_direct_replay_is_the_tuners_search(ray_started, tmp_path):
    table = synthetic_table()
    run = ray_replay(SPACE, table, "asha_tpe", seed=1, budget=30, storage=tmp_path / "asha")
    trials = by_trial(run["reports"])
    asha = make_trial_scheduler(SPACE)  # the same reports, in the same order, to a fresh ASHA of the space
    asha.set_search_properties(SPACE.metric, SPACE.mode)
    stopped_at = {}
    for trial_id, reports in trials.items():  # one trial at a time, as the replay runs them
        trial = ReplayedTrial(trial_id, tmp_path / "fresh")
        asha.on_trial_add(None, trial)
        for epoch, val_acc, _ in reports:
            result = {"epoch": epoch, "val_acc": val_acc}
            if asha.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                stopped_at.setdefault(trial_id, epoch)  # the first STOP: where a live trial ends
        asha.on_trial_complete(None, trial, result)
    last_trial = list(trials)[-1]
    for trial_id, reports in trials.items():
        curve_length = len(table.curves[reports[0][2]].val_acc)
        expected = stopped_at.get(trial_id, curve_length)  # not stopped: ran its whole curve
        if trial_id != last_trial:  # the budget may cut the last trial short
            assert len(reports) == expected, trial_id
    assert any(epoch < 9 for epoch in stopped_at.values()), "ASHA stopped no trial early: nothing was tested"
    direct = direct_replay(SPACE, table, "asha_tpe", seed=1, budget=30, storage=tmp_path / "direct")
    assert [report[1:] for report in direct["reports"]] == [report[1:] for report in run["reports"]]
    assert direct["curve"] == run["curve"]
