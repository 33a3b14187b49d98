"""Soak test of `gimefive monitor`: a looping live stream with an outage every few minutes.

Starts the loopback GStreamer RTSP server from tests/rtsp_server.py (a real face,
skimage's astronaut, as an endless live stream), runs ``gimefive monitor`` on it with
segments + JSON output, and every ``--outage-every`` seconds takes the stream away for
``--outage-s`` seconds, alternating a server restart and a stalled (SIGSTOP) server.
It samples the resident memory (VmRSS) of every stage process throughout, then stops the
monitor with SIGINT and reports:

* RSS per stage at start (after warm-up) and at the end, and the largest value seen;
* frames decoded (received) vs. written (JSON lines, and frames decodable from the
  segments) vs. counted drops, and whether they add up;
* each outage: kind, how long the stream was away, and how long after its return the
  monitor had frames again (reconnect time).

Not a CI test (it runs for minutes): ``python benchmarks/soak.py --minutes 30``. Writes
``soak.json`` and ``soak.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from rtsp_server import RtspServer, server_unavailable_reason  # noqa: E402

from gimefive.memory import rss_mb  # noqa: E402


def stage_processes(parent: int) -> dict[str, int]:
    """Stage name -> pid of the monitor's children (matched by parent pid)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            args = (entry / "cmdline").read_text().split("\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != parent or len(args) < 4:
            continue
        if args[2].startswith("gimefive.pipeline."):
            name = args[3]
            if name == "source" and "--stream" in args:
                name = f"source-{args[args.index('--stream') + 1]}"
            found[name] = int(entry.name)
    return found


def make_weights(path: Path) -> Path:
    import torch

    from gimefive.checkpoint import save_weights
    from gimefive.model import GiMeFive

    torch.manual_seed(0)
    save_weights(path, GiMeFive())
    return path


def count_segment_frames(playlist: Path) -> int:
    import av

    if not playlist.exists():
        return 0
    with av.open(str(playlist), format="concat", options={"safe": "0"}) as c:
        return sum(1 for _ in c.decode(video=0))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--outage-every", type=float, default=180.0, help="seconds")
    p.add_argument("--outage-s", type=float, default=5.0)
    p.add_argument("--size", default="640x360")
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--weights", default=None,
                   help="default: the shipped weights if present, else random-init")
    p.add_argument("--backend", default="auto")
    p.add_argument("--warmup", type=float, default=120.0, help="seconds before 'start' RSS")
    p.add_argument("--out", type=Path, default=Path("soak-out"))
    args = p.parse_args()

    reason = server_unavailable_reason()
    if reason:
        print(f"soak: cannot run: {reason}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for old in list(args.out.glob("cam*")):
        old.unlink()
    weights = args.weights
    if weights is None:
        from gimefive.checkpoint import DEFAULT_WEIGHTS

        weights = str(DEFAULT_WEIGHTS) if Path(DEFAULT_WEIGHTS).is_file() else \
            str(make_weights(args.out / "random.safetensors"))
    import cv2
    from skimage import data

    image = args.out / "astronaut.png"
    cv2.imwrite(str(image), data.astronaut()[:, :, ::-1])
    width, height = (int(v) for v in args.size.split("x"))
    server = RtspServer(path="cam", image=str(image), width=width, height=height,
                        fps=args.fps).start()
    cmd = ["gimefive", "monitor", server.url, "-o", str(args.out / "cam.mp4"), "--json",
           str(args.out / "cam.jsonl"), "--weights", weights, "--backend", args.backend,
           "--status-every", "30", "--stall-timeout", "2", "--log-dir",
           str(args.out / "logs")]
    log = (args.out / "monitor.log").open("w")
    started = time.monotonic()
    monitor = subprocess.Popen(cmd, stderr=log, stdout=log)
    clock = threading.Event()
    samples: list[dict] = []
    outages: list[dict] = []
    end = started + args.minutes * 60
    next_outage = started + args.outage_every
    kind = "restart"
    try:
        while time.monotonic() < end and monitor.poll() is None:
            pids = stage_processes(monitor.pid)
            samples.append({"t": round(time.monotonic() - started, 1),
                            "rss_mb": {n: rss_mb(pid) for n, pid in pids.items()}})
            if time.monotonic() >= next_outage:
                away = time.time()
                if kind == "restart":
                    server.stop()
                    clock.wait(args.outage_s)
                    server.start()
                else:
                    server.pause()
                    clock.wait(args.outage_s)
                    server.resume()
                outages.append({"kind": kind, "away_at": away, "back_at": time.time()})
                print(f"soak: {kind} outage at {time.monotonic() - started:.0f} s",
                      file=sys.stderr, flush=True)
                kind = "stall" if kind == "restart" else "restart"
                next_outage += args.outage_every
            clock.wait(5.0)
    finally:
        monitor.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            monitor.wait(120)
        except subprocess.TimeoutExpired:
            print("soak: the monitor did not stop within 120 s of SIGINT; killing it",
                  file=sys.stderr)
            monitor.kill()
            monitor.wait()
        server.stop()
        log.close()
    wall = time.monotonic() - started
    return report(args, samples, outages, wall, monitor.returncode)


def report(args, samples, outages, wall, rc) -> int:
    status_lines = [json.loads(line) for line in (args.out / "cam.status.jsonl").open()]
    final = status_lines[-1]
    if final.get("kind") != "final":
        print("soak: the monitor wrote no final record (it did not stop cleanly)",
              file=sys.stderr)
        return 1
    stream = final["streams"]["cam0"]
    json_frames = sum(1 for _ in (args.out / "cam.jsonl").open())
    video_frames = count_segment_frames(args.out / "cam.ffconcat")
    warm = [s for s in samples if s["t"] >= args.warmup] or samples
    stages = sorted({n for s in samples for n in s["rss_mb"]})

    def first(name, rows):
        return next((s["rss_mb"][name] for s in rows if s["rss_mb"].get(name)), None)

    rss = {n: {"start_mb": first(n, warm), "end_mb": first(n, reversed(samples)),
               "max_mb": max((s["rss_mb"].get(n) or 0) for s in samples)} for n in stages}
    seen = final.get("outages", [])
    for o in outages:  # match each induced outage with the monitor's record of it
        match = next((m for m in seen if m["started"] >= o["away_at"] - 3), None)
        if match is not None:
            seen = [m for m in seen if m is not match]
            o["monitor_outage_s"] = round(match["duration_s"], 2)
            o["reconnect_after_return_s"] = round(
                match["started"] + match["duration_s"] - o["back_at"], 2)
    adds_up = stream["decoded"] == stream["sent"] + stream["dropped"] + stream["queue"] and \
        stream["sent"] == stream["written"] + stream["lost_in_pipeline"]
    result = {"minutes_requested": args.minutes, "wall_s": round(wall, 1), "monitor_rc": rc,
              "size": args.size, "fps": args.fps, "frames": {
                  "decoded_received": stream["decoded"], "sent_to_pipeline": stream["sent"],
                  "dropped_counted": stream["dropped"], "queued_at_stop": stream["queue"],
                  "lost_in_pipeline": stream["lost_in_pipeline"],
                  "written_json": json_frames, "written_video": video_frames,
                  "monitor_written": stream["written"], "adds_up": adds_up},
              "rss": rss, "outages": outages,
              "restarts": {n: s["restarts"] for n, s in final["stages"].items()}}
    (args.out / "soak.json").write_text(json.dumps(result, indent=2))
    lines = [f"# soak: {wall / 60:.1f} min (requested {args.minutes:g}), {args.size} "
             f"@ {args.fps} fps, monitor exit {rc}", "",
             "| frames | count |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in result["frames"].items()]
    lines += ["", "| stage | RSS start MB | RSS end MB | max MB |", "| --- | --- | --- | --- |"]
    lines += [f"| {n} | {r['start_mb']} | {r['end_mb']} | {r['max_mb']} |"
              for n, r in rss.items()]
    lines += ["", "| outage | away s | reconnect after return s |", "| --- | --- | --- |"]
    lines += [f"| {o['kind']} | {o['back_at'] - o['away_at']:.1f} | "
              f"{o.get('reconnect_after_return_s', 'not seen')} |" for o in outages]
    (args.out / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if rc == 0 and adds_up and json_frames == video_frames else 1


if __name__ == "__main__":
    sys.exit(main())
