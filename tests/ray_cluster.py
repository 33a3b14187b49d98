"""A real multi-node Ray cluster on this machine, on loopback only (tests, benchmarks).

``ray.cluster_utils.Cluster`` starts a head and worker nodes as separate raylets, each
with its own CPUs and object store, so tasks are placed, and retried, across nodes as on
a real cluster. Two things keep it on this machine: every node is given 127.0.0.1, and
Ray's "is this a real cluster" switch is turned off for the driver while it runs
(otherwise Ray replaces 127.0.0.1 in the address it connects to with the machine's
interface address). Ray's usage statistics (sent to the internet) are off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

#: what the nodes and the driver need in their environment (Ray reads them at import)
ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@contextlib.contextmanager
def loopback_cluster(nodes: int = 2, cpus: int = 1, object_store_mb: int = 100
                     ) -> Iterator[tuple[Any, list[Any]]]:
    """A head and ``nodes - 1`` workers, each with ``cpus`` CPUs; yields (cluster, the
    worker nodes). Everything is shut down and removed on exit."""
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    saved_env = {k: os.environ.get(k) for k in ENVIRONMENT}
    saved_switch = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(ENVIRONMENT)
    ray_constants.ENABLE_RAY_CLUSTER = False  # the driver keeps 127.0.0.1
    temp = tempfile.mkdtemp(prefix="gray")  # short: Ray's socket paths must fit 107 bytes
    args = {"num_cpus": cpus, "object_store_memory": object_store_mb << 20,
            "node_ip_address": "127.0.0.1", "temp_dir": temp}
    cluster = None
    try:
        cluster = Cluster(initialize_head=True,
                          head_node_args={**args, "include_dashboard": False})
        workers = [cluster.add_node(**args) for _ in range(nodes - 1)]
        cluster.wait_for_nodes()
        yield cluster, workers
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = saved_switch
        for key, value in saved_env.items():
            os.environ.pop(key, None) if value is None else os.environ.update({key: value})
        shutil.rmtree(temp, ignore_errors=True)
