"""The gap report against MLflow records fabricated in the layout the search driver writes (see
tuner/report/__init__.py): a parent run per search, a nested child run per trial with per-epoch metrics; and the
one-rule helpers it shares with the search driver (ranking, tracking-store locations, tables)."""

import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mlflow")
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from tuner import ranking, text
from tuner.config.schema import resolve
from tuner.report import __main__ as cli
from tuner.report import gaps, importance
from tuner.tracking import reader as report_store
from tuner.tracking import store as tracking_store
from tuner.trial.metric_names import SCHEDULED_LR, block_metric

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0_MS = 1_790_000_000_000


@pytest.fixture(scope="session")
def blank_db(tmp_path_factory):
    """An empty store, created once: MLflow's schema migrations take seconds, copying the file does not."""
    path = tmp_path_factory.mktemp("blank") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def new_store(blank_db, folder):
    shutil.copy(blank_db, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def _curve(peak: float, epochs: int, rng) -> list:
    """A rising accuracy curve that ends near `peak`, with a little noise so the best epoch is not always the last."""
    return [
        min(0.999, peak * (1 - math.exp(-3 * e / epochs)) / (1 - math.exp(-3)) + rng.uniform(-0.004, 0.004))
        for e in range(1, epochs + 1)
    ]


def fabricate_search(
    client,
    space,
    trainer,
    model,
    trials,
    searched=("lr", "weight_decay"),
    start_ms=T0_MS,
    num_blocks=4,
    artifact_root=None,
):
    """One search in the MLflow layout. trials: dicts with outcome, epochs (trained), peak (val_acc it approaches)
    and searched values (lr, weight_decay, ...). Returns {"parent": run_id, "trials": [{..., "run_id", "val"}]}."""
    rng = random.Random(hash((space, trainer, model)) % 1000)
    exp = client.get_experiment_by_name(space)
    exp_id = exp.experiment_id if exp else client.create_experiment(space, artifact_location=artifact_root)
    fixed = {"trainer": trainer, "model": model, "epochs": 8}
    parent = client.create_run(
        exp_id,
        run_name=f"{space}-20261128-021500",
        start_time=start_ms,
        tags={
            "dt.role": "search",
            "dt.space": space,
            "dt.trainer": trainer,
            "dt.model": model,
            "dt.storage": f"/tmp/ray/{space}",
            "dt.status": "running",
            "dt.code_version": "abc1234",
        },
    ).info.run_id
    client.log_batch(parent, params=[Param(k, str(v)) for k, v in fixed.items()])
    ranges = {"lr": (1e-3, 1.0), "weight_decay": (1e-5, 1e-2)}  # loguniform: the report must read log from here
    client.log_text(
        parent,
        yaml.safe_dump(
            {
                "trainer": trainer,
                "model": model,
                "fixed": {"epochs": 8},
                "num_samples": len(trials),
                "search": {k: {"type": "loguniform", "low": ranges[k][0], "high": ranges[k][1]} for k in searched},
            }
        ),
        "space.yaml",
    )
    logged = []
    for i, spec in enumerate(trials):
        trial_id = f"{space[:4]}_{i:05d}"
        config = resolve({**fixed, **{k: spec[k] for k in searched if k in spec}})
        t_start = start_ms + 1000 * (i + 1)
        run_id = client.create_run(
            exp_id,
            run_name=trial_id,
            start_time=t_start,
            tags={
                "mlflow.parentRunId": parent,
                "dt.role": "trial",
                "dt.trial_id": trial_id,
                "dt.trainer": trainer,
                "dt.model": model,
                "dt.outcome": spec["outcome"],
            },
        ).info.run_id
        val = _curve(spec.get("peak", 0.8), spec.get("epochs", 8), rng) if spec["outcome"] != "failed" else []
        if spec["outcome"] == "diverged":
            val = val[:-1]  # its last epoch's metrics were NaN, and the tracker skips non-finite values
        metrics = []
        for epoch, acc in enumerate(val, start=1):
            ts = t_start + 1000 * epoch
            values = {
                "val_acc": acc,
                "train_acc": min(1.0, acc + 0.03 * epoch / len(val)),
                "val_loss": 2.3 * (1 - acc) + 0.1,
                "train_loss": 2.3 * (1 - acc),
                SCHEDULED_LR: config.lr,
                "epoch_s": 30.0,
                "images_per_s": 1500.0,
            }
            if trainer == "dgl":
                for b in range(1, num_blocks + 1):  # deeper blocks are better; block K is the network's own head
                    values[block_metric(b, "val")] = acc * (0.6 + 0.4 * b / num_blocks)
                    values[block_metric(b, "train")] = values["train_acc"] * (0.65 + 0.35 * b / num_blocks)
            metrics += [Metric(k, v, ts, epoch) for k, v in values.items()]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in config.model_dump().items()])
        client.log_dict(run_id, config.model_dump(), "config.json")
        status = {"running": None, "diverged": "FAILED", "failed": "FAILED"}.get(spec["outcome"], "FINISHED")
        if status:
            client.set_terminated(run_id, status, end_time=t_start + 1000 * (len(val) + 1))
        logged.append({**spec, "run_id": run_id, "trial_id": trial_id, "val": val})
    scored = [t for t in logged if t["val"] and t["outcome"] != "diverged"]
    best = max(scored, key=lambda t: t["val"][-1])  # the search ranks by the final val_acc
    best["test_acc"] = best["val"][-1] - 0.01
    client.log_metric(best["run_id"], "test_acc", best["test_acc"])
    client.log_batch(
        parent,
        metrics=[
            Metric("best_val_acc", best["val"][-1], start_ms, 0),
            Metric("best_test_acc", best["test_acc"], start_ms, 0),
            Metric("num_trials", len(logged), start_ms, 0),
        ],
        params=[Param(f"best.{k}", str(best.get(k))) for k in searched],
        tags=[RunTag("dt.status", "finished"), RunTag("dt.best_trial_id", best["trial_id"])],
    )
    client.set_terminated(parent, "FINISHED")
    return {"parent": parent, "trials": logged, "best": best}


def _trials(peaks_lrs, extra=()):
    return [
        dict(outcome="completed", peak=p, lr=lr, weight_decay=5e-4 * (1 + i % 3)) for i, (p, lr) in enumerate(peaks_lrs)
    ] + list(extra)


@pytest.fixture(scope="module")
def store(tmp_path_factory, blank_db):
    """Four searches over two models: vgg16 (backprop, dgl) and basiccnn (backprop, dni); the report run once."""
    tmp = tmp_path_factory.mktemp("report")
    uri, client = new_store(blank_db, tmp)
    art = str(tmp / "artifacts")
    searches = {
        "dgl_vgg16": fabricate_search(
            client,
            "dgl_vgg16",
            "dgl",
            "vgg16",
            _trials(
                [(0.86, 0.02), (0.88, 0.05), (0.83, 0.004), (0.87, 0.08)],
                [
                    dict(outcome="stopped", epochs=2, peak=0.8, lr=0.3, weight_decay=1e-4),
                    # diverged at its 4th epoch after the best accuracy of all: never the best trial
                    dict(outcome="diverged", epochs=4, peak=0.97, lr=1.0, weight_decay=1e-4),
                    dict(outcome="failed", lr=0.5, weight_decay=1e-4),
                ],
            ),
            artifact_root=art + "/dgl",
        ),
        "bp_vgg16": fabricate_search(
            client,
            "bp_vgg16",
            "backprop",
            "vgg16",
            _trials([(0.92, 0.05), (0.93, 0.1), (0.90, 0.01)]),
            artifact_root=art + "/bp",
        ),
        "bp_basiccnn": fabricate_search(
            client,
            "bp_basiccnn",
            "backprop",
            "basiccnn",
            _trials([(0.75, 0.05), (0.78, 0.1)]),
            artifact_root=art + "/bpc",
        ),
        "dni_basiccnn": fabricate_search(
            client,
            "dni_basiccnn",
            "dni",
            "basiccnn",
            _trials([(0.70, 0.05), (0.72, 0.1), (0.65, 0.01)], [dict(outcome="running", epochs=3, peak=0.6, lr=0.2)]),
            artifact_root=art + "/dni",
        ),
    }
    out = tmp / "out"
    result = subprocess.run(
        [sys.executable, "-m", "tuner.report", "--mlflow-uri", uri, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return dict(uri=uri, client=client, searches=searches, out=out, result=result, tmp=tmp)


def test_cli_runs_and_prints_compact_table(store):
    result = store["result"]
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "trainer", "val"]
    assert len(lines) < 20 and max(len(line) for line in lines) < 200


def test_table_has_one_row_per_model_and_trainer_and_the_recorded_gap(store):
    client = tracking_store.connect(store["uri"])
    searches, best = gaps.collect(client)
    rows = gaps.gap_rows(best, searches)
    # models and trainers in the registries' order
    assert [(r["model"], r["trainer"]) for r in rows] == [
        ("basiccnn", "backprop"),
        ("basiccnn", "dni"),
        ("vgg16", "backprop"),
        ("vgg16", "dgl"),
    ]
    by = {(r["model"], r["trainer"]): r for r in rows}
    fab = store["searches"]
    best_val = {name: s["best"]["val"][-1] for name, s in fab.items()}
    assert by["vgg16", "dgl"]["val_acc"] == pytest.approx(best_val["dgl_vgg16"])
    assert by["vgg16", "dgl"]["gap_val"] == pytest.approx((best_val["dgl_vgg16"] - best_val["bp_vgg16"]) * 100)
    assert by["basiccnn", "dni"]["gap_val"] == pytest.approx((best_val["dni_basiccnn"] - best_val["bp_basiccnn"]) * 100)
    assert by["vgg16", "dgl"]["gap_test"] == pytest.approx(
        (fab["dgl_vgg16"]["best"]["test_acc"] - fab["bp_vgg16"]["best"]["test_acc"]) * 100
    )
    assert by["vgg16", "backprop"]["gap_val"] is None
    dgl = by["vgg16", "dgl"]
    assert dgl["trial"].trial_id == fab["dgl_vgg16"]["best"]["trial_id"]
    diverged = next(t for t in fab["dgl_vgg16"]["trials"] if t["outcome"] == "diverged")
    assert diverged["val"][-1] > dgl["val_acc"]  # it would win if diverged trials were ranked
    assert dgl["epochs"] == 8 and dgl["planned_epochs"] == 8 and dgl["wall_s"] == pytest.approx(8 * 30.0)
    assert list(dgl["hyperparameters"]) == ["lr", "weight_decay"]
    # the same numbers reach the console and report.md
    gap = f"{dgl['gap_val']:+.2f}"
    assert gap in store["result"].stdout
    md = (store["out"] / "report.md").read_text()
    assert sum(line.startswith("| vgg16 ") or line.startswith("| basiccnn ") for line in md.splitlines()) == 4
    assert gap in md and f"{best_val['dgl_vgg16'] * 100:.2f}%" in md


def _check_png(path: Path):
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    import matplotlib.image

    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert (pixels.min(axis=-1) < 0.9).mean() > 0.01, f"{path.name} is (almost) blank"
    assert pixels.std() > 0.05


def test_figures_are_valid_non_blank_pngs(store):
    names = {p.name for p in store["out"].glob("*.png")}
    expected = {
        "curves_vgg16.png",
        "curves_basiccnn.png",
        "blocks_vgg16.png",
        "history_dgl_vgg16.png",
        "history_bp_vgg16.png",
        "history_bp_basiccnn.png",
        "history_dni_basiccnn.png",
        "importance_dgl_vgg16.png",
        "importance_bp_vgg16.png",
        "importance_dni_basiccnn.png",
    }
    assert names == expected  # bp_basiccnn has 2 completed trials: too few for importance
    for name in names:
        _check_png(store["out"] / name)
    assert "bp_basiccnn: no importance figure — only 2 completed trial(s)" in store["result"].stdout
    md = (store["out"] / "report.md").read_text()
    assert all(f"({name})" in md for name in names)


def test_report_is_logged_on_every_parent_run(store):
    client = store["client"]
    files = {p.name for p in store["out"].iterdir()}
    for name, search in store["searches"].items():
        logged = {os.path.basename(a.path) for a in client.list_artifacts(search["parent"], "report")}
        assert logged == files, name


def test_one_trainer_says_so_and_still_reports(store, capsys):
    code = cli.main(
        [
            "--mlflow-uri",
            store["uri"],
            "--spaces",
            "dgl_vgg16",
            "--out",
            str(store["tmp"] / "one"),
            "--no-log-artifacts",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "vgg16: only dgl has results — no backprop baseline, so no gap." in out
    table = [line for line in out.splitlines() if line.startswith("vgg16 ")]
    assert len(table) == 1 and " — " in table[0]
    assert (store["tmp"] / "one" / "curves_vgg16.png").exists()


def test_unknown_space_is_one_line_listing_what_exists(store, capsys):
    code = cli.main(["--mlflow-uri", store["uri"], "--spaces", "dgl_vgg19"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        "error: --spaces: no searches in an experiment named 'dgl_vgg19'; "
        "present: bp_basiccnn, bp_vgg16, dgl_vgg16, dni_basiccnn"
    )


def test_empty_store_says_so(blank_db, tmp_path, capsys):
    uri, _ = new_store(blank_db, tmp_path)
    code = cli.main(["--mlflow-uri", uri, "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out.strip()
    assert code == 0
    assert out == f"No searches in {uri} (no MLflow runs tagged dt.role=search): nothing to report."


def test_no_trial_with_results_says_so(blank_db, tmp_path, capsys):
    uri, client = new_store(blank_db, tmp_path)
    exp = client.create_experiment("dgl_vgg16", artifact_location=str(tmp_path / "art"))
    parent = client.create_run(exp, run_name="dgl_vgg16-1", tags={"dt.role": "search", "dt.status": "running"})
    client.create_run(
        exp,
        run_name="t0",
        tags={
            "dt.role": "trial",
            "dt.outcome": "running",
            "dt.trainer": "dgl",
            "dt.model": "vgg16",
            "mlflow.parentRunId": parent.info.run_id,
        },
    )
    code = cli.main(["--mlflow-uri", uri, "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "No trial has reported a validation accuracy yet (1 trial in 1 search): nothing to compare." in out
    assert "dgl_vgg16 / dgl_vgg16-1 [running]: 1 trial (1 running)" in out
    assert "dgl_vgg16: no trial has a validation accuracy yet — no history or importance figure." in out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["report.md"]


@pytest.mark.parametrize("uri", ["sqlite:///no/such/dir/mlflow.db", "foo://bar", "http://127.0.0.1:9"])
def test_bad_uri_is_one_line_and_exit_2(uri, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    code = cli.main(["--mlflow-uri", uri])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --mlflow-uri {uri}: ")
    assert captured.out == ""


def test_configs_and_space_are_read_back_exactly(store):
    client, search = store["client"], store["searches"]["dgl_vgg16"]
    trial = search["trials"][0]
    config = resolve(
        {"trainer": "dgl", "model": "vgg16", "epochs": 8, "lr": trial["lr"], "weight_decay": trial["weight_decay"]}
    ).model_dump()
    back = report_store.logged_config(client, trial["run_id"])
    assert back == config and all(type(back[k]) is type(v) for k, v in config.items())
    dimensions = report_store.logged_dimensions(client, search["parent"])
    assert list(dimensions) == ["lr", "weight_decay"] and all(d.hull.log for d in dimensions.values())


def test_importance_finds_the_parameter_that_matters():
    rng = random.Random(0)
    configs = [
        dict(
            lr=10 ** rng.uniform(-3, -0.5),
            weight_decay=10 ** rng.uniform(-5, -3),
            aux_head=rng.choice(["flatten_mlp", "conv"]),
        )
        for _ in range(16)
    ]
    values = [0.9 - 0.3 * abs(math.log10(c["lr"]) + 1.3) + rng.uniform(0, 0.01) for c in configs]
    scores, method = importance.param_importances(configs, values, ["lr", "weight_decay", "aux_head", "dropout"])
    assert set(scores) == {"lr", "weight_decay", "aux_head"}  # dropout never varies
    assert max(scores, key=scores.get) == "lr"
    assert sum(scores.values()) == pytest.approx(1.0)
    assert "fANOVA" in method
    assert importance.param_importances(configs[:2], values[:2], ["lr"])[0] == {}


def test_ranking_skips_diverged_and_non_finite_and_breaks_ties_by_trial_id():
    trials = [
        ("t3", 0.9, "completed"),
        ("t1", 0.9, "stopped"),
        ("t2", 0.95, "diverged"),
        ("t4", math.nan, "completed"),
        ("t5", None, "running"),
        ("t0", 0.5, "completed"),
    ]

    def score(t):
        return ranking.final_score(t[1], t[2])

    def trial_id(t):
        return t[0]

    assert [t[0] for t in ranking.rank(trials, score, trial_id)] == ["t1", "t3", "t0"]
    assert [t[0] for t in ranking.rank(trials, score, trial_id, mode="min")] == ["t0", "t1", "t3"]
    assert ranking.best_trial(list(reversed(trials)), score, trial_id)[0] == "t1"  # input order does not matter
    assert ranking.best_trial(trials[2:3], score, trial_id) is None


def test_the_report_and_the_search_summary_rank_with_the_same_rule():
    import tuner.report.gaps
    import tuner.search.driver

    assert tuner.search.driver.rank is ranking.rank and tuner.report.gaps.best_trial is ranking.best_trial


def test_sqlite_store_locations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking_store.sqlite_path("sqlite:///mlflow.db") == "mlflow.db"
    assert tracking_store.sqlite_path("sqlite:////srv/mlflow.db") == "/srv/mlflow.db"
    assert tracking_store.sqlite_path("http://host:5000") is None
    assert tracking_store.absolute_tracking_uri("sqlite:///a/mlflow.db") == f"sqlite:///{tmp_path}/a/mlflow.db"
    assert tracking_store.absolute_tracking_uri("sqlite:////srv/mlflow.db") == "sqlite:////srv/mlflow.db"
    assert tracking_store.absolute_tracking_uri("http://host:5000") == "http://host:5000"


def test_tables_align_columns_and_escape_markdown():
    assert text.text_table(("a", "bb"), [("long", "x")], indent="  ") == ["  a     bb", "  long  x"]
    assert text.markdown_table(("a", "b"), [("x|y", "1")]) == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]
    assert [text.fmt_value(v) for v in (None, 0.000123456, 3, "mlp")] == ["-", "0.0001235", "3", "mlp"]
    assert text.fmt_value(0.123456, digits=3) == "0.123"
