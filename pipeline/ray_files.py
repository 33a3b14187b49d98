"""``gimefive annotate IN... --out-dir DIR --ray auto|HOST:PORT``: each file a Ray task.

Ray is imported only here and only when ``--ray`` is given (extra ``gimefive[ray]``).
Each task runs one ordinary annotate job (:mod:`gimefive.pipeline.batch`) and claims the
resources one pipeline needs (``--ray-cpus``, and a GPU where the cluster has them).
Ray runs a task again when its worker or node dies (``max_retries``); a file's own
error is a result, not an exception, so it is not retried.

How files travel (``--ray-transfer``):

* ``shared``: every node sees the inputs and ``--out-dir`` at the same absolute paths
  (NFS, a cluster filesystem, one machine). The task reads the input in place and
  publishes its outputs itself, through the batch's work folder (temporary name, then
  rename), so a lost attempt never leaves a partial file under a final name.
* ``bytes``: the driver puts each input's bytes into Ray's object store (a few files in
  flight at a time); the task writes them to a private temporary folder on its node,
  annotates there and returns the outputs' bytes, which the driver writes (temporary
  name, then rename). Only the driver's machine needs ``--out-dir``. Each file and its
  outputs must fit in the object store of the nodes involved.
* ``auto``: ``shared`` when a small task on every node that can run a file sees a probe
  file in the work folder and every input at its size; else ``bytes``. Nodes that join
  later are assumed to be like those checked.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gimefive.pipeline.batch import (
    BatchOptions,
    FileBar,
    FileJob,
    annotate_file,
    annotate_in_folder,
    attempts_of,
    one_line,
    publish_bytes,
)
from gimefive.pipeline.config import AnnotateConfig

from gimefive.errors import GimefiveError

INSTALL_HINT = "pip install 'gimefive[ray]'"
PROBE_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0


def require_ray():
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise GimefiveError(f"--ray needs Ray, which is not installed: {INSTALL_HINT} "
                            "(on every node of the cluster too)") from None
    return ray


@contextlib.contextmanager
def connected(address: str) -> Iterator[Any]:
    """Ray connected to the cluster at ``address`` (or as the caller already connected
    it, which is then left connected)."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    _check_answers(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise GimefiveError(f"--ray {address}: cannot connect to a Ray cluster "
                            f"({one_line(exc)[:200]})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_answers(address: str) -> None:
    """One line in seconds where nothing answers at the cluster's address (a typo, a
    cluster gone, a stale /tmp/ray/ray_current_cluster for ``auto``): ``ray.init``
    would retry it for many minutes. Ray Client addresses (``ray://``) are left to Ray."""
    if address.startswith("ray://"):
        return
    try:  # Ray's own resolution of auto / RAY_ADDRESS / localhost (private, so guarded)
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return
    try:
        resolved = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as exc:
        raise GimefiveError(f"--ray {address}: no Ray cluster found ({one_line(exc)[:160]})"
                            ) from None
    if resolved is None:  # "local": ray.init starts one here
        return
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise GimefiveError(f"--ray {address}: nothing answers at {resolved} ({reason}); is "
                            "the cluster up (`ray status` on its head)?") from None


def task_resources(ray: Any, options: BatchOptions) -> dict[str, float]:
    gpus = options.ray_gpus
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return {"num_cpus": options.ray_cpus, "num_gpus": gpus}


def _fits(node: dict[str, Any], resources: dict[str, float]) -> bool:
    have = node.get("Resources", {})
    return node.get("Alive") and have.get("CPU", 0) >= resources["num_cpus"] \
        and have.get("GPU", 0) >= resources["num_gpus"]


def file_nodes(ray: Any, resources: dict[str, float]) -> list[str]:
    """Ids of the live nodes big enough to run one file."""
    return [n["NodeID"] for n in ray.nodes() if _fits(n, resources)]


# --------------------------------------------------------------------------- the tasks
def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _sees(work: str, token: str, inputs: list[tuple[str, int]]) -> bool:
    """On a node: whether it sees this batch's work folder and every input as the
    driver does (the probe of ``--ray-transfer auto``)."""
    probe = Path(work) / "probe"
    try:
        if probe.read_text() != token:
            return False
        return all(Path(p).is_file() and Path(p).stat().st_size == size for p, size in inputs)
    except OSError:
        return False


def shared_task(job: FileJob, config: AnnotateConfig, work: Path) -> dict[str, Any]:
    """A file on a node that shares the filesystem: annotate and publish in place."""
    node = _node_id()
    if not (work / "attempts").is_dir() or not job.input.is_file():
        return {"file": str(job.input), "node": node,
                "status": f"failed: node {node[:8]} does not see {work.parent} or the "
                          "input: use --ray-transfer bytes"}
    return annotate_file(job, config, work, node)


def bytes_task(job: FileJob, data: bytes, config: AnnotateConfig
               ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A file sent as bytes: annotate a private copy; return the outputs' bytes."""
    outcome: dict[str, Any] = {"file": str(job.input), "node": _node_id()}
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="gimefive-ray-") as tmp:
        source, out = Path(tmp) / "in" / job.input.name, Path(tmp) / "out"
        source.parent.mkdir()
        out.mkdir()
        try:
            source.write_bytes(data)
            outcome |= annotate_in_folder(source, out, job.names, config)
            files = {key: (out / name).read_bytes() for key, name in job.names.items()
                     if (out / name).exists()}
            outcome["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - the file's status carries it
            outcome["status"] = "failed: " + one_line(exc)
    return outcome, files


# --------------------------------------------------------------------------- the driver
def choose_transfer(ray: Any, mode: str, work: Path, jobs: list[FileJob],
                    nodes: list[str]) -> str:
    """``shared`` or ``bytes`` for ``--ray-transfer mode`` (see the module docstring)."""
    if mode != "auto":
        return mode
    if not nodes:
        return "bytes"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    (work / "probe").write_text(token)
    inputs = [(str(j.input), j.input.stat().st_size) for j in jobs]
    sees = ray.remote(num_cpus=0, max_retries=0)(_sees)
    refs = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
            .remote(str(work), token, inputs) for node in nodes]
    try:
        return "shared" if all(ray.get(refs, timeout=PROBE_TIMEOUT_S)) else "bytes"
    except ray.exceptions.RayError:  # a node left or never answered: do not rely on it
        return "bytes"


def run_on_ray(jobs: list[FileJob], config: AnnotateConfig, options: BatchOptions,
               work: Path, bar: FileBar) -> list[dict[str, Any]]:
    """Every file as a Ray task; outcomes in input order (see the module docstring)."""
    with connected(options.ray) as ray:
        resources = task_resources(ray, options)
        nodes = file_nodes(ray, resources)
        if not nodes:
            print(f"gimefive: no node of the cluster has {resources['num_cpus']:g} CPUs and "
                  f"{resources['num_gpus']:g} GPUs now; the files wait for one (lower "
                  "--ray-cpus, or let an autoscaler add a node)", file=sys.stderr)
        mode = choose_transfer(ray, options.ray_transfer, work, jobs, nodes)
        task = ray.remote(max_retries=options.ray_retries, retry_exceptions=False)(
            shared_task if mode == "shared" else bytes_task).options(**resources)
        # bytes: inputs are put as their tasks are submitted, a few more than run at once
        window = len(jobs) if mode == "shared" else max(2, 2 * len(nodes))
        bar.open()
        return _drive(ray, task, jobs, config, work, mode, window, bar)


def _drive(ray: Any, task: Any, jobs: list[FileJob], config: AnnotateConfig, work: Path,
           mode: str, window: int, bar: FileBar) -> list[dict[str, Any]]:
    queue, pending, outcomes = list(jobs), {}, {}
    try:
        while queue or pending:
            while queue and len(pending) < window:
                job = queue.pop(0)
                ref = task.remote(job, config, work) if mode == "shared" else \
                    task.remote(job, ray.put(job.input.read_bytes()), config)
                pending[ref] = job
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                outcomes[job.index] = _collect(ray, ref, job, mode, work)
                bar.done(outcomes[job.index])
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return [outcomes[job.index] for job in jobs]


def _collect(ray: Any, ref: Any, job: FileJob, mode: str, work: Path) -> dict[str, Any]:
    """A finished task's outcome; with ``bytes`` its outputs written here."""
    try:
        value = ray.get(ref)
    except ray.exceptions.RayError as exc:  # retries used up: the worker or node died
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"file": str(job.input), "status": f"failed: {line[:200]}"}
    if mode == "shared":
        return value | {"tries": len(attempts_of(work, job.index))}
    outcome, files = value
    if outcome["status"] == "ok":
        try:
            publish_bytes(job, files)
        except OSError as exc:
            outcome["status"] = f"failed: writing the outputs: {exc}"
    return outcome
