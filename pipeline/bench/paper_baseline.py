"""The paper's video script, reimplemented as a single-process baseline that reports JSON.

What the GiMeFive authors' ``script_video.py`` does for every frame, reproduced here
step for step (our own code, written from its description):

1. read the frame with ``cv2.VideoCapture``;
2. grayscale it and find faces with OpenCV's Haar cascade
   (``haarcascade_frontalface_default.xml``, ``scaleFactor=1.1, minNeighbors=10,
   minSize=(64, 64)``, the script's settings);
3. for each face, one at a time: the crop goes through PIL resize to 64x64, grayscale to
   3 channels, ``ToTensor`` and ImageNet normalisation; a PyTorch forward pass with
   autograd on, softmax, then ``backward`` of the predicted class's one-hot and Grad-CAM
   at ``conv5`` from hooked activations and gradients (channel weights = spatial mean of
   the gradient, ReLU of the weighted sum, min-max scaled);
4. draw: the CAM resized to the box, JET colour map blended at 0.4, the top emotion and
   all six scores as text;
5. write the frame with ``cv2.VideoWriter`` (MPEG-4 Part 2, ``mp4v``).

Differences, each of which can only make the baseline *faster* than the original: the
dlib 68-point landmark step is left out (dlib is not installed here), and no window is
shown. As in the original, the crop handed to PIL is OpenCV's BGR array (PIL reads it as
RGB, so its grayscale weights land on swapped channels); this changes no timing.

Same model class, same weights file, fp32, torch's default threads: what the script
would run. It needs OpenCV 4 (OpenCV 5 dropped the Haar cascade), so it runs in the venv
made by ``benchmarks/setup_baseline_venv.sh``; ``gimefive bench`` starts it as a
subprocess. Run alone::

    benchmarks/.venv-baseline/bin/python benchmarks/paper_baseline.py VIDEO \\
        --weights W.safetensors --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

# gimefive's model and checkpoint IO (this venv has no gimefive installed): the folder
# bench links the running package into, else the checkout this file sits in
# (pipeline/bench/paper_baseline.py -> the repository root, which holds gimefive/)
sys.path.insert(0, os.environ.get("GIMEFIVE_IMPORT_ROOT")
                or str(Path(__file__).resolve().parents[2]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video")
    parser.add_argument("--weights", default=None,
                        help="GiMeFive weights (.safetensors or the paper's .pth); "
                             "default: the shipped weights")
    parser.add_argument("--json", default=None, help="write the report here (else stdout)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the video")
    parser.add_argument("--warmup-frames", type=int, default=5,
                        help="frames processed once before timing (not counted)")
    parser.add_argument("--max-frames", type=int, default=None)
    return parser


def preflight(args: argparse.Namespace) -> str | None:
    """Problems found before torch loads (a second or two saved on every bad call)."""
    if not Path(args.video).is_file():
        return f"video not found: {args.video}"
    if not hasattr(cv2, "CascadeClassifier"):
        return (f"OpenCV {cv2.__version__} has no CascadeClassifier; run me with the venv "
                "from benchmarks/setup_baseline_venv.sh")
    return None


if __name__ == "__main__":
    _problem = preflight(build_parser().parse_args())
    if _problem:
        print(f"paper_baseline: {_problem}", file=sys.stderr)
        sys.exit(2)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from gimefive.checkpoint import load_model  # noqa: E402
from gimefive.errors import GimefiveError  # noqa: E402
from gimefive.labels import EMOTIONS  # noqa: E402
from gimefive.memory import peak_rss_mb  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_COLOR = (154, 1, 254)
TRANSPARENCY = 0.4


class Conv5Hook:
    """Keeps conv5's output and the gradient flowing back into it (Grad-CAM inputs)."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.activation: torch.Tensor | None = None
        self.gradient: torch.Tensor | None = None
        self.handle = layer.register_forward_hook(self._forward)

    def _forward(self, module, inputs, output) -> None:
        self.activation = output
        output.register_hook(self._backward)

    def _backward(self, grad: torch.Tensor) -> None:
        self.gradient = grad

    def close(self) -> None:
        self.handle.remove()


def to_tensor(crop_bgr: np.ndarray) -> torch.Tensor:
    """The script's transform: PIL resize 64x64, grayscale x3, to tensor, normalise."""
    image = Image.fromarray(crop_bgr).resize((64, 64), Image.BILINEAR).convert("L")
    gray = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    return ((gray.expand(3, 64, 64) - MEAN) / STD).unsqueeze(0)


def classify_with_cam(model, hook: Conv5Hook, crop_bgr: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One face: forward with autograd, backward of the top class, Grad-CAM at conv5."""
    logits = model(to_tensor(crop_bgr))
    probs = torch.softmax(logits, dim=1)
    one_hot = torch.zeros_like(logits)
    one_hot[0, int(probs.argmax(dim=1))] = 1.0
    logits.backward(one_hot, retain_graph=True)
    weights = hook.gradient.mean(dim=(2, 3), keepdim=True)
    cam = (weights * hook.activation).sum(dim=1).clamp(min=0).squeeze(0)
    cam = cam - cam.min()
    cam = cam / cam.max().clamp(min=1e-12)
    return probs.detach().numpy().ravel(), cam.detach().numpy()


def draw_face(frame: np.ndarray, box, probs: np.ndarray, cam: np.ndarray) -> None:
    x, y, w, h = box
    heat = cv2.applyColorMap(np.uint8(255 * cv2.resize(cam, (w, h))), cv2.COLORMAP_JET)
    roi = frame[y:y + h, x:x + w]
    blend = heat / 255.0 * TRANSPARENCY + roi / 255.0 * (1 - TRANSPARENCY)
    frame[y:y + h, x:x + w] = np.uint8(255 * np.clip(blend, 0, 1))
    cv2.putText(frame, EMOTIONS[int(np.argmax(probs))], (x, y - 15), FONT, 1, TEXT_COLOR, 2,
                cv2.LINE_AA)
    for i, name in enumerate(EMOTIONS):
        cv2.putText(frame, f"{name}: {probs[i]:.2f}", (x + w + 10, y - 20 + 40 * (i + 1)),
                    FONT, 1, TEXT_COLOR, 2, cv2.LINE_AA)


def process_video(video: str, output: str, model, hook, cascade, max_frames: int | None
                  ) -> tuple[float, list[list[list[int]]]]:
    """One pass over the video; returns (seconds, boxes per frame as x1, y1, x2, y2)."""
    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        raise SystemExit(f"paper_baseline: cannot open video {video}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    boxes_per_frame: list[list[list[int]]] = []
    start = time.perf_counter()
    try:
        while max_frames is None or len(boxes_per_frame) < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=10,
                                             minSize=(64, 64))
            boxes = []
            for x, y, w, h in (faces if len(faces) else []):
                probs, cam = classify_with_cam(model, hook, frame[y:y + h, x:x + w])
                draw_face(frame, (int(x), int(y), int(w), int(h)), probs, cam)
                boxes.append([int(x), int(y), int(x + w), int(y + h)])
            writer.write(frame)
            boxes_per_frame.append(boxes)
    finally:
        capture.release()
        writer.release()
    return time.perf_counter() - start, boxes_per_frame


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = preflight(args)
    if problem:
        print(f"paper_baseline: {problem}", file=sys.stderr)
        return 2
    try:
        model, _ = load_model(args.weights)  # fp32, eval mode, parameters require grad
    except GimefiveError as exc:
        print(f"paper_baseline: {exc}", file=sys.stderr)
        return 2
    hook = Conv5Hook(model.conv5)
    cascade = cv2.CascadeClassifier(
        str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "baseline.mp4")
        process_video(args.video, out, model, hook, cascade, args.warmup_frames)
        cpu0 = time.process_time()
        seconds, boxes = [], []
        for _ in range(max(1, args.repeat)):
            s, boxes = process_video(args.video, out, model, hook, cascade, args.max_frames)
            seconds.append(s)
        cpu = time.process_time() - cpu0
        out_bytes = Path(out).stat().st_size
    hook.close()
    frames = len(boxes)
    fps = [frames / s for s in seconds]
    faces = [len(b) for b in boxes]
    report = {
        "name": "paper_baseline",
        "frames": frames,
        "runs_s": seconds,
        "fps_runs": fps,
        "fps_max": max(fps),
        "fps_median": statistics.median(fps),
        "time_min_s": min(seconds),
        "time_median_s": statistics.median(seconds),
        "cpu_s_per_frame": cpu / (frames * len(seconds)) if frames else None,
        "peak_rss_mb": peak_rss_mb(),
        "faces_total": sum(faces),
        "faces_per_frame_mean": sum(faces) / frames if frames else 0.0,
        "boxes": boxes,
        "output_bytes": out_bytes,
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "opencv": cv2.__version__, "numpy": np.__version__},
        "omitted": ["dlib 68-point landmarks (not installed)", "cv2.imshow window"],
    }
    text = json.dumps(report)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
