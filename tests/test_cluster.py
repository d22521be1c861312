"""A search on a real multi-node Ray cluster, with an MLflow tracking server on PostgreSQL (docs/cluster.md).

The fast tests check tuner/cluster.py's refusals with the cluster simulated. The slow one does what the docs tell
a user to do, on loopback: PostgreSQL, `mlflow server` on it, a Ray head and a worker node (one CPU each, token
authentication on), then a 4-trial search with --address and its Optuna study in PostgreSQL; mid-search the
worker node is killed, and its trial must finish on the head from its checkpoint. Every process is started here
and stopped by its PID (Ray nodes by their session id), so other Ray instances on the machine are left alone.
"""

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from fakedata import learnable_arrays, write_cifar_folder
from helpers import local_store

import tuner.search.ray_cluster as cluster
from tuner.search.folder import SearchRecord

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # ray and mlflow from this venv
EPOCHS = 8

CLUSTER_SPACE = f"""
trainer: backprop
model: basiccnn
fixed: {{width: 0.0625, epochs: {EPOCHS}, batch_size: 50, train_subset: 800, val_size: 200, eval_batch_size: 200}}
search:
  lr: {{type: loguniform, low: 0.02, high: 0.1}}
scheduler: {{type: fifo}}
searcher: {{type: random, seed: 0}}
num_samples: 4
max_concurrent: 2
resources: {{cpu: 1, gpu: 0}}
metric: val_acc
mode: max
"""


# ------------------------------------------------------------------------------------ fast: refusals, simulated

TWO_NODES = [
    {"NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": {"CPU": 1}},
    {"NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2", "Alive": True, "Resources": {"CPU": 1}},
]


def test_storage_that_one_node_cannot_see_is_refused(monkeypatch, tmp_path):
    def read_on_each_node(path, node_ids):  # node a sees this folder; node b has a local disk of its own
        return {node_ids[0]: Path(path).read_text(), node_ids[1]: "<not found>"}

    monkeypatch.setattr(cluster, "alive_nodes", lambda: TWO_NODES)
    monkeypatch.setattr(cluster, "read_on_each_node", read_on_each_node)
    with pytest.raises(cluster.ClusterError) as caught:
        cluster.check_cluster_storage(tmp_path, "10.0.0.1:6379")
    message = str(caught.value)
    assert "\n" not in message and f"--storage {tmp_path}" in message
    assert "10.0.0.2" in message and "<not found>" in message and "NFS" in message
    assert list(tmp_path.iterdir()) == []  # the marker is removed


def test_shared_storage_is_accepted_and_uris_skip_the_marker_check(monkeypatch, tmp_path):
    reads = []

    def read_on_each_node(path, node_ids):
        reads.append(path)
        return {node_id: Path(path).read_text() for node_id in node_ids}

    monkeypatch.setattr(cluster, "alive_nodes", lambda: TWO_NODES)
    monkeypatch.setattr(cluster, "read_on_each_node", read_on_each_node)
    cluster.check_cluster_storage(tmp_path, "10.0.0.1:6379")
    assert len(reads) == 1 and list(tmp_path.iterdir()) == []
    cluster.check_cluster_storage("s3://bucket/runs", "10.0.0.1:6379")
    cluster.check_cluster_storage(tmp_path, None)  # local Ray: one node
    assert len(reads) == 1


def test_storage_uri_is_refused_by_the_cli_in_one_line(capsys):
    from tuner.run import main

    assert main(["--space", "dgl_quick", "--storage", "s3://bucket/runs", "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--storage s3://bucket/runs" in lines[0] and "NFS" in lines[0]


def test_bad_optuna_storage_is_refused_in_one_line_before_anything_exists(capsys, tmp_path):
    from tuner.run import main

    for url, expected in (
        ("mongodb://127.0.0.1/optuna", "Optuna keeps studies in sqlite, postgresql, mysql databases"),
        (f"postgresql://optuna:secret@127.0.0.1:{free_port()}/optuna", "cannot connect"),
        ("not a url", "not a database URL"),
    ):
        args = ["--space", "dgl_quick", "--storage", str(tmp_path / "runs"), "--optuna-storage", url]
        assert main([*args, "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "--optuna-storage" in lines[0], lines
        assert "secret" not in lines[0]  # a password is not printed
    assert list(tmp_path.iterdir()) == []  # no search folder, no MLflow store


def test_file_tracking_store_is_refused_on_several_nodes(monkeypatch):
    monkeypatch.setattr(cluster, "alive_nodes", lambda: TWO_NODES)
    for uri in ("sqlite:///mlflow.db", "/tmp/mlruns", "file:///tmp/mlruns"):
        with pytest.raises(cluster.ClusterError, match="mlflow server") as caught:
            cluster.check_cluster_tracking(uri, "10.0.0.1:6379")
        assert "\n" not in str(caught.value) and uri in str(caught.value)
    cluster.check_cluster_tracking("http://10.0.0.1:5000", "10.0.0.1:6379")
    cluster.check_cluster_tracking("sqlite:///mlflow.db", None)
    monkeypatch.setattr(cluster, "alive_nodes", lambda: TWO_NODES[:1])
    cluster.check_cluster_tracking("sqlite:///mlflow.db", "10.0.0.1:6379")


def test_token_messages_say_what_to_set(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=" in cluster.token_message("h:1")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert cluster.token_source() is None and "has no token" in cluster.token_message("h:1")
    with pytest.raises(cluster.ClusterError, match="has no token"):
        cluster.probe_address("127.0.0.1:1")  # before any connection: Ray's C++ client would abort the process
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("abc")
    assert "refused the token from ~/.ray/auth_token" in cluster.token_message("h:1")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert "refused the token from RAY_AUTH_TOKEN" in cluster.token_message("h:1")


def test_refused_token_is_found_in_the_error_chain():
    from ray.exceptions import AuthenticationError

    try:
        try:
            raise RuntimeError("Failed to connect to GCS. Last connection error: ... InvalidAuthToken: missing")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from inner
    except ConnectionError as outer:
        assert cluster._refused_token(outer)
    assert cluster._refused_token(AuthenticationError("no token"))
    assert not cluster._refused_token(ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379"))


def test_bad_or_silent_address_is_one_line_exit_2():
    for address, expected in ((f"127.0.0.1:{free_port()}", "nothing answers there"), ("10.0.0.1:x", "HOST:PORT")):
        started = time.time()
        result = subprocess.run(
            [sys.executable, "-m", "tuner.cluster", "--address", address],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and address in lines[0], result.stderr
        assert time.time() - started < 60


# ------------------------------------------------------------------------- slow: the real thing, on loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, process=None, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what}: not ready after {timeout:.0f} s (exit code {process and process.poll()})\n{tail}")


def session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def session_pids(session: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and session_of(int(p)) == session]


def kill_session(session: int) -> None:
    """SIGKILL every process of a session this test started (a Ray node: raylet, its workers, agents...)."""
    for pid in session_pids(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop(process: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 60) -> None:
    """Stop a process started with start_new_session=True, then anything left in its session."""
    if process.poll() is None:
        process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    kill_session(process.pid)
    process.wait(10)


def start_logged(command: list, log: Path, **kwargs) -> subprocess.Popen:
    """A server or node of these tests: output to `log`, in a session of its own (so `stop` ends all of it)."""
    with open(log, "w") as out:  # the child writes through the inherited descriptor
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def create_database(uri: str, name: str) -> str:
    """A new database on the PostgreSQL server of `uri`; returns its URI."""
    import psycopg

    with psycopg.connect(uri, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return uri.rsplit("/", 1)[0] + f"/{name}"


def postgres_bindir() -> Path | None:
    for initdb in [shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)]:
        if initdb and Path(initdb).resolve().with_name("postgres").exists():
            return Path(initdb).resolve().parent
    return None


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on a free loopback port, database `mlflow`; yields its URI."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, postgres) not found; .ci/run installs them "
            "(apt-get install postgresql)"
        )
    root = Path(tempfile.mkdtemp(prefix="dt-pg-"))
    as_user = {}
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = dict(user="postgres", group="postgres", extra_groups=[])
    port, log = free_port(), root / "postgres.log"
    subprocess.run(
        [bindir / "initdb", "-D", root / "data", "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        cwd=root,
        **as_user,
    )
    server = start_logged(
        [bindir / "postgres", "-D", root / "data", "-p", str(port), "-k", root]
        + ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        log,
        cwd=root,
        **as_user,
    )
    try:

        def ready():
            return subprocess.run([bindir / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0

        wait_until(ready, 60, "PostgreSQL", server, log)
        yield create_database(f"postgresql://mlflow@127.0.0.1:{port}/postgres", "mlflow")
    finally:
        stop(server, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for clients to leave)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """`mlflow server` with the PostgreSQL above as its backend store; yields its http URI."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port, log = free_port(), folder / "server.log"
    server = start_logged(
        [
            BIN / "mlflow",
            "server",
            "--backend-store-uri",
            postgres,
            "--artifacts-destination",
            str(folder / "artifacts"),
        ]
        + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        log,
    )
    uri = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, 180, "mlflow server", server, log)
        yield uri
    finally:
        stop(server)


class RayCluster:
    def __init__(self, root: Path, env: dict):
        self.root, self.env, self.nodes = root, env, {}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def start_node(self, name: str, *args: str) -> subprocess.Popen:
        """`ray start --block` in a session of its own: the session id names every process of the node."""
        log = self.root / f"{name}.log"
        node = start_logged(
            [
                BIN / "ray",
                "start",
                "--block",
                "--num-cpus=1",
                "--node-ip-address=127.0.0.1",
                f"--temp-dir={self.root / name}",
            ]
            + ["--min-worker-port=0", "--max-worker-port=0", f"--dashboard-agent-listen-port={free_port()}", *args],
            log,
            env=self.env,
        )
        self.nodes[name] = node
        # printed once the node has registered with the head
        wait_until(lambda: "Ray runtime started" in log.read_text(), 120, f"Ray node '{name}'", node, log)
        return node

    def node_of_pid(self, pid: int) -> str | None:
        """Which node ran a worker process: each node logs its workers under its own --temp-dir."""
        for name in self.nodes:
            if glob.glob(str(self.root / name / "session_*" / "logs" / f"worker-*-{pid}.out")):
                return name
        return None


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and a worker node on loopback, one CPU each, token authentication on (with a token of our own)."""
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    root = Path(tempfile.mkdtemp(prefix="dtray-"))  # short: Ray's socket paths must stay under 108 characters
    ray = RayCluster(root, env)
    try:
        ray.start_node(
            "head", "--head", f"--port={ray.port}", "--include-dashboard=false", f"--dashboard-port={free_port()}"
        )
        ray.start_node("worker", f"--address={ray.address}")
        yield ray
    finally:
        for node in reversed(list(ray.nodes.values())):
            stop(node)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, learnable_arrays(1000, 200, seed=3))
    return root


def without_token(env: dict) -> dict:
    return {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}


@pytest.mark.slow
def test_a_machine_without_the_token_is_refused(ray_cluster, tmp_path):
    # Ray's own behaviour, which docs/cluster.md describes: a worker node without the token cannot join
    log = tmp_path / "refused.log"
    refused = start_logged(
        [BIN / "ray", "start", "--block", f"--address={ray_cluster.address}", "--num-cpus=1"]
        + [f"--temp-dir={ray_cluster.root / 'refused'}"],
        log,
        env=without_token(ray_cluster.env),
    )
    try:
        assert refused.wait(180) != 0
    finally:
        stop(refused)
    assert "InvalidAuthToken" in log.read_text()

    # ours: one line that says what to set, instead of ~20 s of retries ending in a traceback
    for env, expected in (
        (without_token(ray_cluster.env), "RAY_AUTH_MODE is not 'token' here"),
        ({**ray_cluster.env, "RAY_AUTH_TOKEN": "0" * 32}, "refused the token from RAY_AUTH_TOKEN"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "tuner.cluster", "--address", ray_cluster.address],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr


@pytest.mark.slow
def test_run_refuses_what_two_nodes_cannot_share(ray_cluster, fake_data, tmp_path):
    """`tuner.run --address` on two nodes: a SQLite tracking file is refused before any trial starts."""
    space = tmp_path / "cluster_tiny.yaml"
    space.write_text(CLUSTER_SPACE)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuner.run",
            "--space",
            str(space),
            "--data-dir",
            str(fake_data),
            *local_store(tmp_path),
            "--address",
            ray_cluster.address,
        ],
        cwd=tmp_path,
        env=ray_cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--mlflow-uri sqlite:" in lines[0] and "mlflow server" in lines[0], result.stderr
    assert not list((tmp_path / "runs").glob("*/*/result.json"))  # no trial ran


@pytest.mark.slow
def test_search_on_two_nodes_survives_losing_one(ray_cluster, mlflow_server, postgres, fake_data, tmp_path):
    from mlflow.tracking import MlflowClient

    env = {**ray_cluster.env, "PYTHONUNBUFFERED": "1"}
    storage = tmp_path / "runs"
    storage.mkdir()

    # the cluster checks, on two real nodes: the storage is seen by both, a SQLite file is refused
    check = [sys.executable, "-m", "tuner.cluster", "--address", ray_cluster.address]
    ok = subprocess.run(
        [*check, "--storage", str(storage), "--mlflow-uri", mlflow_server],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 nodes alive" in ok.stdout and "every node sees it" in ok.stdout
    refused = subprocess.run(
        [*check, "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "mlflow server" in refused.stderr, refused.stdout + refused.stderr

    space = tmp_path / "cluster_tiny.yaml"
    space.write_text(CLUSTER_SPACE)
    optuna_uri = create_database(postgres, "optuna")  # Optuna's own tables, in a database beside MLflow's
    log = tmp_path / "search.log"
    with open(log, "w") as out:
        search = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tuner.run",
                "--space",
                str(space),
                "--data-dir",
                str(fake_data),
                "--storage",
                str(storage),
                "--mlflow-uri",
                mlflow_server,
                "--address",
                ray_cluster.address,
                "--optuna-storage",
                optuna_uri,
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = MlflowClient(mlflow_server)
    try:
        killed_trial = kill_worker_node_mid_trial(ray_cluster, client, search)
        assert search.wait(420) == 0, log.read_text()[-4000:]
    finally:
        if search.poll() is None:
            search.kill()
    output = log.read_text()
    assert "4 trials: 4 completed" in output, output[-4000:]

    # MLflow, through the server: the layout, every trial complete with one point per epoch
    experiment = client.get_experiment_by_name("cluster_tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dt.role") == "search"]
    children = [r for r in runs if r.data.tags.get("dt.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["dt.status"] == "finished"
    assert 0 < parents[0].data.metrics["best_val_acc"] <= 1 and "best_test_acc" in parents[0].data.metrics
    for run in children:
        assert run.data.tags["dt.outcome"] == "completed" and run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), run.data.tags["dt.trial_id"]

    # ... and the rows are in PostgreSQL itself
    import psycopg

    with psycopg.connect(postgres) as db:
        stored = db.execute("SELECT run_uuid FROM runs WHERE experiment_id = %s", (int(experiment.experiment_id),))
        assert {row[0] for row in stored.fetchall()} == {r.info.run_id for r in runs}
        points = dict(
            db.execute("SELECT run_uuid, count(*) FROM metrics WHERE key = 'val_acc' GROUP BY run_uuid").fetchall()
        )
    assert all(points.get(r.info.run_id) == EPOCHS for r in children)

    # the Optuna study is in PostgreSQL, every trial told once, with one value per epoch; search.json points there
    import optuna

    folder = Path(parents[0].data.tags["dt.storage"])
    study = optuna.load_study(study_name=folder.name, storage=optuna_uri)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert all(sorted(t.intermediate_values) == list(range(1, EPOCHS + 1)) for t in study.trials)
    assert SearchRecord.load(folder).settings.optuna_storage == optuna_uri and not (folder / "optuna.db").exists()

    # trials ran on both nodes; the killed one went on from its checkpoint on the head
    results = {
        p.parent.name: [json.loads(line) for line in p.read_text().splitlines()] for p in folder.glob("*/result.json")
    }
    assert len(results) == 4
    nodes_used = {ray_cluster.node_of_pid(row["pid"]) for rows in results.values() for row in rows}
    assert nodes_used == {"head", "worker"}
    rows = results[killed_trial]
    before = [r for r in rows if ray_cluster.node_of_pid(r["pid"]) == "worker"]
    after = [r for r in rows if ray_cluster.node_of_pid(r["pid"]) == "head"]
    assert before and after and rows == before + after
    assert [r["epoch"] for r in before] == list(range(1, len(before) + 1))
    resumed_at = after[0]["epoch"]
    assert 1 < resumed_at <= len(before) + 1, f"restarted at epoch {resumed_at}, not from its checkpoint"
    assert [r["epoch"] for r in after] == list(range(resumed_at, EPOCHS + 1))
    assert after[0]["iterations_since_restore"] == 1 and after[-1]["finished"]


def kill_worker_node_mid_trial(ray_cluster: RayCluster, client, search: subprocess.Popen) -> str:
    """Kill every process of the worker node once a trial there has reported epoch 2 (so the driver holds a
    checkpoint of it) and still has epochs to go; return that trial's id."""
    worker = ray_cluster.nodes["worker"]
    deadline = time.time() + 300
    while time.time() < deadline and search.poll() is None:
        for pid in session_pids(worker.pid):
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")  # Tune runs each trial in a working dir named by its id
            except OSError:
                continue
            if "working_dirs" not in cwd:
                continue
            trial_id = os.path.basename(cwd)
            runs = client.search_runs(
                [e.experiment_id for e in client.search_experiments()], f"tags.`dt.trial_id` = '{trial_id}'"
            )
            epochs = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_acc")] if runs else []
            if 2 <= max(epochs, default=0) < EPOCHS:
                kill_session(worker.pid)
                worker.wait(30)
                return trial_id
        time.sleep(0.3)
    raise AssertionError("no trial on the worker node reached epoch 2 before the search ended")
