"""`python -m tuner.cluster --address ADDR [--storage PATH] [--mlflow-uri URI]`: the checks a search on a Ray cluster
needs first (tuner/search/ray_cluster.py says which), run on their own."""

from __future__ import annotations

import argparse
import sys

from tuner.errors import ClusterError
from tuner.ray_adaptations.environment import prepare_environment
from tuner.search.ray_cluster import alive_nodes, check_cluster_storage, check_cluster_tracking, init_ray, probe_address


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tuner.cluster",
        description="Check a Ray cluster before a search: the head answers and accepts this machine's token "
        "(run it on a machine before `ray start --address`, too); with --storage / --mlflow-uri, run "
        "on a node of the cluster, it also checks that every node sees the storage and that the "
        "tracking store suits a cluster.",
    )
    p.add_argument("--address", required=True, help="the head node, HOST:PORT")
    p.add_argument("--storage", help="the --storage folder a search would use")
    p.add_argument("--mlflow-uri", help="the --mlflow-uri a search would use")
    args = p.parse_args(argv)
    prepare_environment()
    try:
        probe_address(args.address)
        print(f"{args.address}: the head answers and accepts this machine's token")
        if args.storage or args.mlflow_uri:
            init_ray(args.address)
            nodes = alive_nodes()
            print(
                f"{len(nodes)} nodes alive: "
                + ", ".join(
                    f"{n['NodeManagerAddress']} ({n['NodeID'][:8]}, {n['Resources'].get('CPU', 0):g} CPU, "
                    f"{n['Resources'].get('GPU', 0):g} GPU)"
                    for n in nodes
                )
            )
        if args.mlflow_uri:
            check_cluster_tracking(args.mlflow_uri, args.address)
            print(f"--mlflow-uri {args.mlflow_uri}: suits this cluster")
        if args.storage:
            check_cluster_storage(args.storage, args.address)
            print(f"--storage {args.storage}: every node sees it")
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
