"""Evaluation: batched inference over a face split, metrics, and the paper's figures.

Reported numbers use fp32 by default; bf16 is optional for speed. Inputs go through
:func:`gimefive.preprocess.normalize_gray` on the same uint8 64x64 faces that
training uses, so evaluation and the pipeline see identical pixels.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gimefive.labels import EMOTIONS, NUM_CLASSES
from gimefive.preprocess import normalize_gray


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on ``device`` when ``precision == "bf16"``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images: np.ndarray, *, batch_size: int = 256,
                  precision: str = "fp32", device: str | torch.device = "cpu",
                  channels_last: bool = False, progress: bool = False) -> np.ndarray:
    """Softmax probabilities float32 [N,6] for uint8 gray faces [N,64,64]."""
    from tqdm import tqdm

    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = np.zeros((len(images), NUM_CLASSES), dtype=np.float32)
    starts = range(0, len(images), batch_size)
    try:
        for start in tqdm(starts, desc="evaluating", unit="batch", disable=not progress,
                          mininterval=2.0, leave=False):
            x = torch.from_numpy(normalize_gray(images[start:start + batch_size])).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, precision):
                logits = model(x)
            out[start:start + len(x)] = torch.softmax(logits.float(), dim=1).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """Counts [true, predicted]."""
    return np.bincount(np.asarray(labels) * n + np.asarray(preds), minlength=n * n).reshape(n, n)


@dataclass
class Metrics:
    accuracy: float
    macro_recall: float
    per_class_accuracy: dict[str, float | None]
    support: dict[str, int]
    confusion: np.ndarray
    count: int

    @classmethod
    def from_confusion(cls, cm: np.ndarray) -> Metrics:
        cm = np.asarray(cm, dtype=np.int64)
        support = cm.sum(axis=1)
        total = int(cm.sum())
        recall = [float(cm[i, i] / support[i]) if support[i] else None for i in range(len(cm))]
        present = [r for r in recall if r is not None]
        return cls(accuracy=float(np.trace(cm) / total) if total else 0.0,
                   macro_recall=float(np.mean(present)) if present else 0.0,
                   per_class_accuracy=dict(zip(EMOTIONS, recall, strict=True)),
                   support={e: int(s) for e, s in zip(EMOTIONS, support, strict=True)},
                   confusion=cm, count=total)

    def to_dict(self) -> dict:
        return {"count": self.count, "accuracy": self.accuracy, "macro_recall": self.macro_recall,
                "per_class_accuracy": self.per_class_accuracy, "support": self.support,
                "confusion": self.confusion.tolist(), "classes": list(EMOTIONS)}


def compute_metrics(labels: np.ndarray, probs: np.ndarray) -> Metrics:
    return Metrics.from_confusion(confusion_matrix(labels, probs.argmax(axis=1)))


def choose_uncertain_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """Threshold on the top probability that best separates right from wrong predictions.

    Picks t on a 0.01 grid maximising (#correct with top >= t) + (#wrong with top < t):
    a face is marked uncertain exactly where, on the validation split, predictions at
    that confidence are more often wrong than right. Ties go to the lower threshold.
    """
    top = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    best_t, best_score = 0.0, -1
    for t in np.round(np.arange(0.17, 1.0, 0.01), 2):
        above = top >= t
        score = int(np.sum(correct & above) + np.sum(~correct & ~above))
        if score > best_score:
            best_t, best_score = float(t), score
    return best_t


def plot_confusion(cm: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Confusion-matrix PNG with counts in each cell and class names on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=120)
    try:
        row_sum = np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(cm / row_sum, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=35, ha="right")
        ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                dark = cm[i, j] / row_sum[i, 0] > 0.5
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def write_scores_csv(path: str | Path, filenames: list[str], labels: np.ndarray,
                     probs: np.ndarray, threshold: float) -> Path:
    """Per image: filename, label, prediction, six probabilities, uncertain flag."""
    path = Path(path)
    preds = probs.argmax(axis=1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label", "prediction", *EMOTIONS, "uncertain"])
        for name, y, p, row in zip(filenames, labels, preds, probs, strict=True):
            writer.writerow([name, int(y), int(p), *(f"{v:.6f}" for v in row),
                             int(row.max() < threshold)])
    return path


def write_report(out_dir: str | Path, metrics: Metrics, filenames: list[str],
                 labels: np.ndarray, probs: np.ndarray, threshold: float,
                 extra: dict | None = None, title: str = "") -> dict[str, Path]:
    """metrics.json, confusion.png and scores.csv in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uncertain = int(np.sum(probs.max(axis=1) < threshold)) if len(probs) else 0
    summary = {**metrics.to_dict(), "uncertain_threshold": threshold,
               "uncertain_count": uncertain, **(extra or {})}
    paths = {"metrics": out_dir / "metrics.json", "confusion": out_dir / "confusion.png",
             "scores": out_dir / "scores.csv"}
    paths["metrics"].write_text(json.dumps(summary, indent=2) + "\n")
    plot_confusion(metrics.confusion, paths["confusion"], title)
    write_scores_csv(paths["scores"], filenames, labels, probs, threshold)
    return paths


def format_metrics(metrics: Metrics) -> str:
    """A short human-readable table for the terminal."""
    lines = [f"accuracy {metrics.accuracy * 100:.2f}% on {metrics.count} faces, "
             f"macro recall {metrics.macro_recall * 100:.2f}%"]
    for name, acc in metrics.per_class_accuracy.items():
        shown = "   n/a" if acc is None else f"{acc * 100:6.2f}%"
        lines.append(f"  {name:<10} {shown}  (n={metrics.support[name]})")
    return "\n".join(lines)
