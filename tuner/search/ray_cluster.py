"""Starting or joining Ray, quietly; and the checks a search on a cluster of several machines needs first.

Ray starts with the environment tuner/ray_adaptations/environment.py sets (quieter logs, no usage statistics, the
experiment state written at every step), and its workers ignore the terminal's Ctrl-C.

On a cluster (`--address`), three things go wrong late and obscurely unless checked first (recipe: docs/cluster.md):
  - token authentication, on by default: a machine without the head's token is refused after ~20 s of retries
    with a raw gRPC error (InvalidAuthToken); `probe_address` says in seconds, in one line, what to set;
  - storage: trials write checkpoints on whichever node runs them and the driver reads them back, so on more
    than one node `--storage` must be one folder every node sees (NFS; storage URIs are not supported yet);
  - tracking: a SQLite file lives on one machine; a search on several nodes logs to a tracking server.
`python -m tuner.cluster --address ADDR [--storage PATH] [--mlflow-uri URI]` (tuner/cluster.py) runs these checks
on their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuner.errors import ClusterError, one_line
from tuner.ray_adaptations.environment import WORKER_SETUP, prepare_environment

DEFAULT_PORT = 6379  # Ray's GCS port when an address names none
PROBE_TIMEOUT_S = 5  # a TCP connect to the head; ray.init itself would retry for minutes
NODE_ANSWER_TIMEOUT_S = 60  # the storage check's tiny task on each node
DOCS = "docs/cluster.md"


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """A local Ray (address None) or an existing cluster (`--address`)."""
    prepare_environment()
    import ray

    if ray.is_initialized():
        return
    if address:
        probe_address(address)
    kwargs: dict[str, Any] = dict(
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        configure_logging=True,
        runtime_env=WORKER_SETUP,
    )
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    except Exception as error:  # Ray raises many types here; the user needs one line, not a traceback
        if address and _refused_token(error):
            raise ClusterError(token_message(address)) from None
        message = one_line(error)
        target = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ClusterError(f"could not start or reach {target}: {message}") from None


# ------------------------------------------------------------------------------------- reaching the head


def split_address(address: str) -> tuple[str, int]:
    """'host:port' or 'host' -> (host, port); anything else is a ClusterError."""
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = address, str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--address {address}: expected HOST:PORT of the head node, e.g. 10.0.0.1:{DEFAULT_PORT}")
    return host, int(port)


def probe_address(address: str) -> None:
    """Fail in seconds with one line where ray.init would retry and end in a raw error: nothing listening, or
    the head refusing this machine's token. 'auto' and ray:// addresses are left to Ray."""
    if address == "auto" or "://" in address:
        return
    host, port = split_address(address)
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and token_source() is None:
        raise ClusterError(token_message(address))  # checked first: Ray's C++ client aborts the process on it
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as error:
        raise ClusterError(
            f"--address {address}: nothing answers there ({error.strerror or error}); is the head "
            f"started (`ray start --head --port={port}`) and the port open to this machine?"
        ) from None
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # ray's _raylet.pyi lists only ids and ObjectRef

    try:
        with _stderr_silenced():  # Ray's C++ client logs each refused attempt straight to file descriptor 2
            GcsClient(address=f"{host}:{port}")
    except Exception as error:  # anything but a refused token is for ray.init to report in full
        if _refused_token(error):
            raise ClusterError(token_message(address)) from None


def token_source() -> str | None:
    """Where Ray on this machine takes its token from (Ray's own order), or None."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = os.environ["RAY_AUTH_TOKEN_PATH"]
        return f"RAY_AUTH_TOKEN_PATH={path}" if _nonempty_file(Path(path)) else None
    return "~/.ray/auth_token" if _nonempty_file(Path.home() / ".ray" / "auth_token") else None


def _nonempty_file(path: Path) -> bool:
    try:
        return bool(path.read_text().strip())
    except OSError:
        return False


def token_message(address: str) -> str:
    """The one line for a refused token: what is missing on this machine and how to set it."""
    get_token = "`ray get-auth-token` on the head prints it"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        # Ray sends a token to an explicit address only in token mode, even when ~/.ray/auth_token exists
        return (
            f"--address {address}: the cluster requires its authentication token and RAY_AUTH_MODE is not "
            f"'token' here; export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<token> ({get_token}; see {DOCS})"
        )
    source = token_source()
    if source is None:
        return (
            f"--address {address}: RAY_AUTH_MODE=token but this machine has no token; export "
            f"RAY_AUTH_TOKEN=<token> ({get_token}; see {DOCS})"
        )
    return f"--address {address}: the cluster refused the token from {source}; use the head's ({get_token})"


def _refused_token(error: BaseException) -> bool:
    """Whether an error, or one it was raised from, is Ray refusing (or missing) an authentication token."""
    from ray.exceptions import AuthenticationError

    seen = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, AuthenticationError) or "InvalidAuthToken" in str(link):
            return True
        link = link.__cause__ or link.__context__
    return False


@contextlib.contextmanager
def _stderr_silenced():
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# ------------------------------------------------------------------------------ what a multi-node search needs


def check_cluster(storage: str | Path, mlflow_uri: str, address: str | None) -> None:
    """Both checks below, after init_ray: call once Ray is up, before any trial starts."""
    check_cluster_tracking(mlflow_uri, address)
    check_cluster_storage(storage, address)


def is_uri(location: str) -> bool:
    """s3://, gs://, hdfs://, http://, ... (a Windows drive letter or file:// is a path)."""
    return len(urlparse(location).scheme) > 1 and urlparse(location).scheme != "file"


def alive_nodes() -> list[dict]:
    import ray

    return [node for node in ray.nodes() if node["Alive"]]


def check_cluster_tracking(mlflow_uri: str, address: str | None) -> None:
    """On a cluster of several nodes, refuse a tracking store that is a file on this machine (sqlite://, a path).
    The driver is the only writer either way; what a file cannot give a cluster is one place that every machine
    (and every person) reads, and that outlives the driver's disk. `mlflow server` over the same SQLite file is
    the quick way out; PostgreSQL behind it is the real one."""
    if not address or urlparse(mlflow_uri).scheme not in ("", "file", "sqlite"):
        return
    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    raise ClusterError(
        f"--mlflow-uri {mlflow_uri}: a file on this machine, and this cluster has {len(nodes)} "
        f"nodes; log to a tracking server instead: `mlflow server --backend-store-uri "
        f"postgresql://...` and --mlflow-uri http://HOST:5000 (see {DOCS})"
    )


def check_cluster_storage(storage: str | Path, address: str | None) -> None:
    """On a cluster of several nodes, refuse a `--storage` path that some node does not see as the same folder:
    write a marker with a random token there, and read it back on every node."""
    if not address or is_uri(str(storage)):
        return  # local Ray is one node; Ray itself checks the URIs it supports
    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    folder = Path(storage).expanduser().resolve()
    token = secrets.token_hex(16)
    marker = folder / f".dt-shared-{token[:8]}"
    try:
        marker.write_text(token)
    except OSError as error:
        raise ClusterError(f"--storage {folder}: cannot write there ({error.strerror or error})") from None
    try:
        seen = read_on_each_node(str(marker), [node["NodeID"] for node in nodes])
    finally:
        marker.unlink(missing_ok=True)
    for node in nodes:
        answer = seen.get(node["NodeID"], "<no answer>")
        if answer != token:
            why = answer if answer.startswith("<") else "<a different file>"
            raise ClusterError(
                f"--storage {folder} is not shared with node {node['NodeManagerAddress']} ({node['NodeID'][:8]}): "
                f"the marker written here reads there as {why}; use a path every node mounts (NFS) (see {DOCS})"
            )


def read_on_each_node(path: str, node_ids: list[str]) -> dict[str, str]:
    """node id -> the text of `path` as that node sees it, or a reason in <angle brackets>."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # num_cpus=0: it must run even on a head started with --num-cpus=0 or a node busy with other work
    read = ray.remote(num_cpus=0, max_retries=0)(_read_text)
    refs = {
        node_id: read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(path)
        for node_id in node_ids
    }
    seen = {}
    for node_id, ref in refs.items():
        try:
            seen[node_id] = ray.get(ref, timeout=NODE_ANSWER_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            seen[node_id] = f"<no answer within {NODE_ANSWER_TIMEOUT_S} s>"
            ray.cancel(ref, force=True)
        except ray.exceptions.RayError as error:  # e.g. the project is not installed on that node
            lines = [line for line in str(error).splitlines() if line.strip()]
            seen[node_id] = f"<{lines[-1].strip() if lines else type(error).__name__}>"
    return seen


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return "<not found>"
    except OSError as error:
        return f"<{error.strerror or error}>"
