#!/usr/bin/env bash
# Wheel smoke test: build the wheel, install it (not editable) into a fresh virtual
# environment that reuses this environment's installed dependencies, and run the CLI
# from a folder outside the checkout, as a user who installed the wheel would.
#
# Why: an editable install reads files beside the package (configs/, benchmarks/), so a
# file the wheel forgets is only noticed by someone installing it. Here the new venv sees
# the base environment's site-packages through a .pth line, which adds the folder to
# sys.path without running the .pth files in it (so the base's editable gimefive finder
# is never installed) and after the venv's own site-packages (so the wheel comes first).
#
# Usage: bash scripts/wheel_smoke.sh   (with the project's venv active: its python is the base)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_PY="$(command -v python)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gimefive-wheel-smoke.XXXXXX")"
trap 'rc=$?; if [ "$rc" -eq 0 ]; then rm -rf "$WORK"; else echo "wheel smoke: FAILED (exit $rc); files kept in $WORK" >&2; fi' EXIT

step() { printf '\n=== wheel smoke: %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
site_of() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

step "build the wheel from a clean copy of the tree"
WHEEL="$(bash scripts/build_wheel.sh "$WORK/dist")"
echo "built $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1))"

step "install it, not editable, into a fresh venv"
python -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
NEW_SITE="$(site_of "$VPY")"
site_of "$BASE_PY" > "$NEW_SITE/_gimefive_smoke_base_env.pth"
echo "dependencies from $(cat "$NEW_SITE/_gimefive_smoke_base_env.pth")"
"$VPY" -m pip install -q --no-deps --ignore-installed "$WHEEL"
export PATH="$WORK/venv/bin:$PATH"
mkdir "$WORK/run"
cd "$WORK/run"
echo "working directory: $(pwd) (outside the checkout)"
"$VPY" - "$NEW_SITE" <<'PY'
import sys

import gimefive
import gimefive.configs
import gimefive.pipeline.bench
from gimefive.config import shipped_config

site = sys.argv[1]
for module in (gimefive, gimefive.configs, gimefive.pipeline.bench):
    print(f"{module.__name__}: {module.__file__}")
    assert module.__file__.startswith(site + "/"), f"{module.__name__} is not the wheel's"
for name in ("annotate.yaml", "monitor.yaml", "export.yaml", "train_default.yaml"):
    path = shipped_config(name)
    assert path.is_file() and str(path).startswith(site + "/"), path
print("default configs found in the installed package")
PY

step "gimefive --help and every subcommand's --help"
show gimefive --help
for cmd in $("$VPY" -c 'from gimefive.cli import COMMANDS; print(*COMMANDS)'); do
  gimefive "$cmd" --help > "help_$cmd.txt"
  echo "\$ gimefive $cmd --help  -> ok: $(head -n 1 "help_$cmd.txt")"
done

step "gimefive export (default config from the package)"
show gimefive export -o x.onnx
test -s x.onnx && echo "x.onnx: $(du -h x.onnx | cut -f1)"

step "gimefive annotate on a generated clip"
"$VPY" - <<'PY'
import av
import cv2
import numpy as np
from skimage import data

face = cv2.resize(data.astronaut(), (240, 240))  # a real face, RGB
with av.open("clip.mp4", "w") as out:
    stream = out.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
    for i in range(12):
        frame = np.full((360, 640, 3), 90, np.uint8)
        frame[60:300, 100 + 10 * i:340 + 10 * i] = face
        out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    out.mux(stream.encode())
print("clip.mp4: 12 frames, 640x360, the astronaut photo moving right")
PY
show gimefive annotate clip.mp4 -o annotated.mp4 --json faces.jsonl
"$VPY" - <<'PY'
import json

import av

with av.open("annotated.mp4") as c:
    frames = sum(1 for _ in c.decode(video=0))
records = [json.loads(line) for line in open("faces.jsonl")]
faces = sum(len(r["faces"]) for r in records)
print(f"annotated.mp4: {frames} frames; faces.jsonl: {len(records)} records, {faces} faces")
assert frames == 12 and len(records) == 12 and faces >= 6, "annotate lost frames or faces"
PY

step "gimefive bench (decode and detect only, one tiny generated scene)"
show gimefive bench -o bench --resolutions 640x360 --scenes closeup --frames 10 --repeat 1 \
  --skip classify,pipeline,baseline,scaling --no-warmup > bench_stdout.txt
grep -E "^\| (decode|detect) only" bench/bench.md
test -s bench/bench.json

step "all passed"
