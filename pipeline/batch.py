"""Many video files in one ``gimefive annotate`` command: locally in parallel, or on Ray.

Each file is one ordinary annotate job (:func:`~gimefive.pipeline.run.annotate_video`,
five stage processes); this module only plans the files, runs several jobs at once and
publishes their outputs. :func:`annotate_file` is the one per-file function: the local
process pool calls it, and so does the Ray task when the cluster shares a filesystem
(:mod:`gimefive.pipeline.ray_files`; without one the task calls :func:`annotate_in_folder`
on a private copy and sends the bytes back).

Why a work folder: a file's outputs are written inside ``OUT_DIR/.gimefive-batch-ID/``
(one folder per attempt) and moved to their final names with ``os.replace`` only when
the job succeeded, so a final name never holds a partial file, even when the node that
ran it died. A ``done`` record written after the move lets a retried attempt of a file
that was already published return at once instead of writing it a second time. The
driver removes the work folder, and with it whatever lost attempts left, at the end.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.run import sigterm_as_interrupt

from gimefive.config import check_settings, setting
from gimefive.errors import GimefiveError, StageError

#: per input STEM: what is written to --out-dir (``config`` is annotate_video's resolved
#: config, written beside the video)
OUTPUT_NAMES = {"output": "{stem}_annotated.mp4", "json": "{stem}.jsonl",
                "summary": "{stem}.summary.json",
                "config": "{stem}_annotated.mp4.config.yaml"}
WORK_PREFIX = ".gimefive-batch-"
STOP = "stop"  #: in the work folder: the batch was interrupted, start no more files


@dataclass
class BatchOptions:
    """How several files are run: here in parallel, or as Ray tasks on a cluster."""

    jobs: int = setting(0, min=0, flag="-j --jobs", help="Files annotated at once on this "
                        "machine, each a 5-process pipeline using about 2 cores; 0: half "
                        "the cores, at least 2, at most the cores (measured: "
                        "docs/cluster.md).")
    ray: str | None = setting(None, help="Run each file as a Ray task: auto (RAY_ADDRESS or "
                              "the cluster `ray start` began on this machine) or HOST:PORT "
                              "of the head; needs gimefive[ray] here and on every node.")
    ray_transfer: str = setting("auto", choices=("auto", "shared", "bytes"),
                                help="How files reach Ray workers: shared (every node sees "
                                "the inputs and --out-dir at the same paths), bytes "
                                "(inputs and outputs travel through Ray's object store), "
                                "auto (shared when every node sees them, else bytes).")
    ray_cpus: float = setting(2.0, min=0, min_open=True,
                              help="CPUs each file's Ray task claims (one pipeline uses "
                                   "about 2 cores).")
    ray_gpus: float | None = setting(None, min=0, help="GPUs each file's Ray task claims; "
                                     "not given: 1 where the cluster has GPUs, else 0.")
    ray_retries: int = setting(3, min=0, help="Times a file's Ray task runs again when its "
                               "worker or node dies (a file's own error is not retried).")

    def __post_init__(self) -> None:
        check_settings(self, "batch option")

    def local_jobs(self) -> int:
        """``jobs``, or from the cores: one pipeline keeps about two busy, but a second
        one fills the gaps of the first (its start, its end): 1.1x on 2 cores."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
        return self.jobs or min(cores, max(2, cores // 2))


@dataclass(frozen=True)
class FileJob:
    """One input and where its outputs go (absolute paths)."""

    index: int
    input: Path
    finals: dict[str, Path] = field(hash=False)

    @property
    def names(self) -> dict[str, str]:
        return {key: path.name for key, path in self.finals.items()}


# --------------------------------------------------------------------------- planning
def expand_inputs(args: Iterable[str]) -> list[Path]:
    """Paths, glob patterns and ``@LIST`` files (one path or pattern a line, ``#``
    comments; relative to the current folder) -> existing files, each once, in order."""
    from gimefive.pipeline.probe import is_live, same_file

    found: list[Path] = []
    for arg in args:
        for item in _list_file(arg[1:]) if arg.startswith("@") else [arg]:
            if is_live(item):
                raise GimefiveError(f"{item.split('@')[-1]}: a camera cannot be one of "
                                    "several inputs; annotate it alone, or use `gimefive "
                                    "monitor`")
            matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
            if not matches:
                raise GimefiveError(f"no file matches {item}")
            for match in matches:
                path = Path(match).absolute()
                if not path.is_file():
                    raise GimefiveError(f"input not found (or not a file): {match}")
                if not any(same_file(path, seen) for seen in found):
                    found.append(path)
    if not found:
        raise GimefiveError("no input files")
    return found


def _list_file(name: str) -> list[str]:
    try:
        lines = Path(name).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise GimefiveError(f"cannot read the list file {name} ({reason})") from None
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def plan_jobs(inputs: list[Path], out_dir: Path, force: bool = False) -> list[FileJob]:
    """Each input's final output paths in ``out_dir``; one line for a clash (two inputs
    of one name, an output that is an input) or an existing output without ``force``."""
    from gimefive.pipeline.probe import same_file

    out_dir = out_dir.absolute()
    if not out_dir.is_dir():
        raise GimefiveError(f"--out-dir {out_dir} does not exist (or is not a folder)")
    jobs, owners = [], {}
    for index, path in enumerate(inputs):
        finals = {key: out_dir / pattern.format(stem=path.stem)
                  for key, pattern in OUTPUT_NAMES.items()}
        if (other := owners.get(path.stem)) is not None:
            raise GimefiveError(f"{other} and {path} would write the same outputs "
                                f"({finals['json'].name}): rename one or run them apart")
        owners[path.stem] = path
        for target in finals.values():
            if any(same_file(target, src) for src in inputs):
                raise GimefiveError(f"output {target} would replace an input")
            if target.exists() and not force:
                raise GimefiveError(f"output {target} already exists (give --force to "
                                    "overwrite it)")
        jobs.append(FileJob(index, path, finals))
    return jobs


# --------------------------------------------------------------------------- one file
def annotate_in_folder(input_path: Path, folder: Path, names: dict[str, str],
                       config: AnnotateConfig) -> dict[str, Any]:
    """Annotate ``input_path`` into ``folder`` under ``names``; its summary as a dict.

    The same job as ``gimefive annotate IN -o V --json J --summary S``: annotate_video
    writes under partial names and renames when it succeeds."""
    from gimefive.pipeline.run import annotate_video

    result = annotate_video(input_path, folder / names["output"],
                            json_path=folder / names["json"],
                            summary_path=folder / names["summary"], config=config,
                            progress=False)
    return {"frames": result.frames, "faces": result.faces, "fps": result.fps,
            "wall_s": result.wall_s}


def annotate_file(job: FileJob, config: AnnotateConfig, work: Path,
                  node: str = "") -> dict[str, Any]:
    """Annotate one file and publish its outputs under their final names; never raises
    for the file's own failure (its status says it). Safe to run again after a lost
    attempt: see the module docstring."""
    node = node or socket.gethostname()
    attempt = f"{job.index}-{uuid.uuid4().hex[:8]}"
    _record_attempt(work, attempt, node)
    done = work / "done" / f"{job.index}.json"
    if done.is_file():  # an earlier attempt published it, then its node died
        return json.loads(done.read_text()) | {"reused": True}
    folder = work / attempt
    outcome: dict[str, Any] = {"file": str(job.input), "node": node}
    try:
        folder.mkdir()
        outcome |= annotate_in_folder(job.input, folder, job.names, config)
        for final in job.finals.values():
            if (folder / final.name).exists():
                os.replace(folder / final.name, final)
        outcome["status"] = "ok"
        _write_atomic(done, json.dumps(outcome).encode())
    except Exception as exc:  # noqa: BLE001 - the file's status carries it, one line
        outcome["status"] = "failed: " + one_line(exc)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return outcome


def one_line(exc: BaseException) -> str:
    from gimefive.urls import redact_text

    text = str(exc) if isinstance(exc, GimefiveError) else f"{type(exc).__name__}: {exc}"
    return redact_text(" ".join(text.split()))


def _record_attempt(work: Path, attempt: str, node: str) -> None:
    """Which node started which attempt of a file, for the final table's tries column."""
    record = {"node": node, "pid": os.getpid(), "started": time.time()}
    _write_atomic(work / "attempts" / f"{attempt}.json", json.dumps(record).encode())


def attempts_of(work: Path, index: int) -> list[dict[str, Any]]:
    """The attempts recorded for file ``index``, oldest first."""
    records = [json.loads(p.read_text())
               for p in (work / "attempts").glob(f"{index}-*.json")]
    return sorted(records, key=lambda r: r["started"])


def _write_atomic(path: Path, data: bytes) -> None:
    """``path`` appears complete or not at all: a temporary name beside it, then rename."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def publish_bytes(job: FileJob, files: dict[str, bytes]) -> None:
    """Write what a remote task returned under the final names (each atomically)."""
    for key, data in files.items():
        _write_atomic(job.finals[key], data)


# --------------------------------------------------------------------------- the batch
class WorkFolder:
    """``OUT_DIR/.gimefive-batch-ID/``: attempt folders, attempt records, done records.
    Removed on exit with everything lost attempts left in it."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir.absolute() / f"{WORK_PREFIX}{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> Path:
        for sub in ("attempts", "done"):
            (self.path / sub).mkdir(parents=True)
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self.path.exists():  # a lost attempt's stage may still be finishing a file
            print(f"gimefive: could not remove the work folder {self.path} (a lost "
                  "attempt may still write there); delete it later", file=sys.stderr)


class FileBar:
    """One progress bar over all files (tqdm, stderr), advanced as each file ends; shown
    from :meth:`open`, once the files start (an error before that stays one line)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.bar, self.frames, self.failed = None, 0, 0

    def open(self) -> None:
        if self.enabled and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="file", desc="annotate", file=sys.stderr,
                            dynamic_ncols=True)

    def done(self, outcome: dict[str, Any]) -> None:
        self.frames += int(outcome.get("frames") or 0)
        self.failed += outcome.get("status") != "ok"
        if self.bar is not None:
            self.bar.set_postfix(frames=self.frames, failed=self.failed, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _local_file(job: FileJob, config: AnnotateConfig, work: Path) -> dict[str, Any]:
    if (work / STOP).exists():  # queued in this process before the batch was stopped
        return {"file": str(job.input), "status": "failed: interrupted"}
    return annotate_file(job, config, work)


def run_local(jobs: list[FileJob], config: AnnotateConfig, work: Path, parallel: int,
              bar: FileBar) -> list[dict[str, Any]]:
    """Up to ``parallel`` files at once, each in a process of a pool (spawned: each runs
    annotate_video in its main thread, which handles SIGINT/SIGTERM); in input order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    outcomes: dict[int, dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(parallel, len(jobs)), mp_context=context) as pool:
        futures = {pool.submit(_local_file, job, config, work): job for job in jobs}
        bar.open()
        try:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    outcome = future.result()
                except BrokenProcessPool as exc:
                    outcome = {"file": str(job.input), "status": f"failed: {exc}"}
                outcomes[job.index] = outcome
                bar.done(outcome)
        except BaseException:  # Ctrl-C, SIGTERM: stop the files running, as one is stopped
            # (the pool has no public way to reach a running call: its processes are private)
            (work / STOP).touch()  # the calls already handed to a process do not start
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()  # SIGTERM: annotate_video stops its stages, cleans up
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [outcomes[job.index] for job in jobs]


def run_batch(inputs: list[str], out_dir: Path, config: AnnotateConfig,
              options: BatchOptions, force: bool = False,
              quiet: bool = False) -> list[dict[str, Any]]:
    """``gimefive annotate IN... --out-dir DIR``: plan, run (here or on Ray), print the
    table; raises :class:`StageError` naming the failed files after publishing the rest."""
    if options.ray:
        from gimefive.pipeline.ray_files import require_ray

        require_ray()  # one line before anything is planned or written
    jobs = plan_jobs(expand_inputs(inputs), out_dir, force)
    if options.ray or options.local_jobs() > 1:  # several pipelines share the cores:
        config = dataclasses.replace(  # auto replicas (from all the cores) would oversubscribe
            config, detect_replicas=config.detect_replicas or 1,
            classify_replicas=config.classify_replicas or 1)
    started = time.perf_counter()
    bar = FileBar(len(jobs), enabled=not quiet)
    try:
        with sigterm_as_interrupt(), WorkFolder(out_dir) as work:
            if options.ray:
                from gimefive.pipeline.ray_files import run_on_ray

                outcomes = run_on_ray(jobs, config, options, work, bar)
            else:
                outcomes = run_local(jobs, config, work, options.local_jobs(), bar)
    finally:
        bar.close()
    if not quiet:
        print(format_table(outcomes, time.perf_counter() - started, ray=bool(options.ray)))
    failed = [o for o in outcomes if o["status"] != "ok"]
    if failed:
        raise StageError(f"{len(failed)} of {len(outcomes)} files failed; first: "
                         f"{Path(failed[0]['file']).name}: "
                         f"{failed[0]['status'].removeprefix('failed: ')}")
    return outcomes


def format_table(outcomes: list[dict[str, Any]], wall_s: float, ray: bool = False) -> str:
    """The final table: file, frames, faces, fps, status (with Ray: node and tries)."""
    extra = ray
    width = max([4, *(len(Path(o["file"]).name) for o in outcomes)])
    head = f"{'file':<{width}} {'frames':>7} {'faces':>7} {'fps':>7}"
    rows = [head + (f" {'node':<8} {'tries':>5}" if extra else "") + "  status"]
    for o in outcomes:
        fps = f"{o['fps']:.1f}" if o.get("fps") is not None else "-"
        row = f"{Path(o['file']).name:<{width}} {o.get('frames', '-'):>7} " \
              f"{o.get('faces', '-'):>7} {fps:>7}"
        if extra:
            row += f" {str(o.get('node', '-'))[:8]:<8} {o.get('tries', '-'):>5}"
        rows.append(f"{row}  {o['status']}")
    frames = sum(int(o.get("frames") or 0) for o in outcomes)
    ok = sum(o["status"] == "ok" for o in outcomes)
    rows.append(f"{ok} of {len(outcomes)} files ok, {frames} frames in {wall_s:.1f} s "
                f"({frames / max(wall_s, 1e-9):.1f} frames/s overall)")
    return "\n".join(rows)
